"""The roles catalogue (DOMAIN.md). Lanes of deployed diagrams must name one of these."""
from __future__ import annotations

from dataclasses import dataclass

MUNICIPALITY, COMARCA, SECTION, IMAS, ANY, SYSTEM = "municipality", "comarca", "section", "imas", "any", "system"


@dataclass(frozen=True)
class Role:
    code: str
    label: str  # Catalan; also the lane name in diagrams
    level: str
    supervisor: bool = False


ROLES: dict[str, Role] = {r.code: r for r in [
    Role("sscb_social_worker", "Treballador/a social", MUNICIPALITY),
    Role("sscb_social_educator", "Educador/a social", MUNICIPALITY),
    Role("sscb_family_worker", "Treballador/a familiar", MUNICIPALITY),
    Role("sscb_admin", "Auxiliar administratiu/va", MUNICIPALITY),
    Role("sscb_coordinator", "Coordinador/a SSCB", MUNICIPALITY, supervisor=True),
    Role("imas_childhood_referent", "Referent d'infància IMAS", COMARCA),
    Role("imas_intake", "Equip de primera valoració i urgències", IMAS),
    Role("imas_case_manager", "Professional de referència IMAS", SECTION),
    Role("imas_psychologist", "Psicòleg/psicòloga IMAS", IMAS),
    Role("imas_jurist", "Jurista IMAS", IMAS),
    Role("imas_section_head", "Cap de secció IMAS", SECTION, supervisor=True),
    Role("imas_foster_care", "Tècnic/a d'acolliment familiar", IMAS),
    Role("imas_adoption", "Tècnic/a d'adopcions", IMAS),
    Role("imas_emancipation", "Tècnic/a d'emancipació", IMAS),
    Role("commission_risk", "Comissió de Declaració de Risc", MUNICIPALITY),
    Role("commission_guardianship", "Comissió de Desemparament i Tutela", IMAS),
    Role("notifier", "Notificant", ANY),
    Role("analyst", "Analista", SYSTEM),
    Role("auditor", "Auditor/a", SYSTEM),
]}

# Roles that never work on cases and so never appear as lanes.
NON_CASE_ROLES = {"notifier", "analyst", "auditor"}

_BY_LANE = {r.label.casefold(): r.code for r in ROLES.values() if r.code not in NON_CASE_ROLES}
_BY_LANE.update({r.code: r.code for r in ROLES.values() if r.code not in NON_CASE_ROLES})


def role_for_lane(lane_name: str) -> str | None:
    """A lane names a role by its Catalan label or by its code."""
    return _BY_LANE.get((lane_name or "").strip().casefold())
