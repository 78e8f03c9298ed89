"""Demo and test data: users for every role in several territories, cases at different stages."""
from __future__ import annotations

from datetime import date

from engine.errors import EngineError

from .security import principal_for_user

DEMO_PASSWORD = "camins-demo-2026"

# (username, role, unit name)
DEMO_USERS: list[tuple[str, str, str]] = []
for _town, _tag in (("Manacor", "manacor"), ("Son Servera", "sonservera"), ("Inca", "inca"), ("Palma", "palma")):
    DEMO_USERS += [
        (f"ts.{_tag}", "sscb_social_worker", _town),
        (f"es.{_tag}", "sscb_social_educator", _town),
        (f"tf.{_tag}", "sscb_family_worker", _town),
        (f"adm.{_tag}", "sscb_admin", _town),
        (f"coord.{_tag}", "sscb_coordinator", _town),
        (f"comissio.{_tag}", "commission_risk", _town),
    ]
DEMO_USERS += [
    ("ref.llevant", "imas_childhood_referent", "Llevant i Migjorn"),
    ("ref.raiguer", "imas_childhood_referent", "Raiguer"),
    ("ref.nord", "imas_childhood_referent", "Nord i Pla"),
    ("ref.tramuntana", "imas_childhood_referent", "Tramuntana"),
    ("intake.imas", "imas_intake", "IMAS"),
    ("intake2.imas", "imas_intake", "IMAS"),
    ("psi.imas", "imas_psychologist", "IMAS"),
    ("jur.imas", "imas_jurist", "IMAS"),
    ("cm.llevant", "imas_case_manager", "IMAS Llevant"),
    ("cm.ponent", "imas_case_manager", "IMAS Ponent"),
    ("cap.llevant", "imas_section_head", "IMAS Llevant"),
    ("cap.ponent", "imas_section_head", "IMAS Ponent"),
    ("acolliment.imas", "imas_foster_care", "IMAS"),
    ("adopcions.imas", "imas_adoption", "IMAS"),
    ("emancipacio.imas", "imas_emancipation", "IMAS"),
    ("comissio.tutela", "commission_guardianship", "IMAS"),
    ("notificant.escola", "notifier", "IMAS"),
    ("analista", "analyst", "IMAS"),
    ("auditor", "auditor", "IMAS"),
]

TODAY = "2026-11-20"
# Form data a caseworker would enter, per user task (keys from bpmn/forms).
TASK_DATA = {
    "registre_notificacio": {"canal": "full_notificacio", "data_recepcio": TODAY, "es_reiteracio": False},
    "valorar_urgencia": {"perill_immediat": False, "justificacio": "Sense indicis de perill immediat."},
    "assumir_guarda_provisional": {"data_guarda": TODAY, "mesura_immediata": "acolliment_urgencia",
                                   "fiscalia_informada": True},
    "visita_domiciliaria": {"data_visita": TODAY, "nombre_visites": 2, "familia_present": True,
                            "condicions_habitatge": "deficients"},
    "informe_social": {"data_informe_social": TODAY, "situacio_economica": "precaria", "xarxa_suport": "limitada"},
    "informe_educatiu": {"data_informe_educatiu": TODAY, "escolaritzacio": "absentisme",
                         "coordinacio_centre_educatiu": True},
    "valoracio_gravetat": {"cura_fisica": 1, "seguretat": 1, "necessitats_emocionals": 1, "educacio": 1,
                           "maltractament": 0, "abandonament": False},
    "validar_valoracio": {"valoracio_validada": True, "observacions": "Conforme."},
    "decisio_imas": {"imas_accepta": True, "data_decisio_imas": TODAY, "motiu_decisio": "Gravetat confirmada."},
    "revisar_termini_vencut": {"accio_revisio": "reclamar_decisio"},
    "escalacio_seccio": {"accio": "reclamar", "observacions": "Reclamada la decisió."},
    "escalacio_municipal": {"accio": "reclamar", "observacions": "Reclamada la proposta."},
}
# VALORA scores that grade to each severity through bpmn/gravetat.dmn.
SEVERITY_SCORES = {
    "sense_risc": {"cura_fisica": 0, "seguretat": 0, "necessitats_emocionals": 1, "educacio": 0, "maltractament": 0,
                   "abandonament": False},
    "lleu": {"cura_fisica": 1, "seguretat": 1, "necessitats_emocionals": 1, "educacio": 0, "maltractament": 0,
             "abandonament": False},
    "moderat": {"cura_fisica": 2, "seguretat": 1, "necessitats_emocionals": 2, "educacio": 1, "maltractament": 0,
                "abandonament": False},
    "greu": {"cura_fisica": 3, "seguretat": 3, "necessitats_emocionals": 2, "educacio": 2, "maltractament": 2,
             "abandonament": False},
    "desemparament": {"cura_fisica": 3, "seguretat": 3, "necessitats_emocionals": 3, "educacio": 2,
                      "maltractament": 3, "abandonament": True},
}


def create_demo_users(camins) -> None:
    for username, role, unit in DEMO_USERS:
        camins.create_user(username, DEMO_PASSWORD, [(role, unit)], full_name=username)


def principal(camins, username: str):
    from sqlalchemy import select

    from .models import User
    with camins.db.read() as session:
        return principal_for_user(session.scalar(select(User).where(User.username == username)))


def notify(camins, municipality: str, given: str, family: str, birth: date, kind: str = "school") -> str:
    result = camins.submit_notification(
        principal(camins, "notificant.escola"), municipality,
        {"given_name": given, "family_name": family, "birth_date": birth},
        {"kind": kind, "anonymous": False}, "Absències reiterades i signes de descura.")
    return result["case_reference"]


def work_open_tasks(camins, reference: str, element_ids: list[str], overrides: dict | None = None) -> None:
    """Complete, in order, the open task of each element id, as a candidate of its queue."""
    from sqlalchemy import select

    from engine.models import HumanTask

    from .models import Membership, User
    for element_id in element_ids:
        with camins.db.read() as session:
            task = session.scalar(select(HumanTask).where(HumanTask.business_key == reference,
                                                          HumanTask.element_id == element_id,
                                                          HumanTask.state == "open"))
            if task is None:
                raise EngineError(f"{reference}: no open task {element_id}")
            users = session.scalars(select(User.username).join(Membership)
                                    .where(Membership.role == task.role, Membership.org_unit == task.org_unit)
                                    .order_by(User.username)).all()
            forbidden = task.distinct_from_user
        username = task.assignee or next(u for u in users if u != forbidden)
        data = dict(TASK_DATA[element_id], **((overrides or {}).get(element_id, {})))
        camins.complete(principal(camins, username), task.id, data)


def seed_demo(camins, fresh: bool = True):
    if fresh:
        create_demo_users(camins)
    stages = []
    first = notify(camins, "Manacor", "Aina", "Ferrer Pons", date(2015, 3, 14))
    stages.append((first, "Detecció: notificació pendent de registre (auxiliar administratiu, Manacor)"))

    second = notify(camins, "Son Servera", "Joan", "Sureda Mas", date(2012, 7, 2))
    work_open_tasks(camins, second, ["registre_notificacio"])
    stages.append((second, "Detecció: pendent de valorar la urgència (treballador/a social, Son Servera)"))

    third = notify(camins, "Inca", "Marc", "Vidal Coll", date(2020, 1, 22), kind="health")
    work_open_tasks(camins, third, ["registre_notificacio", "valorar_urgencia"],
                    {"valorar_urgencia": {"perill_immediat": True, "justificacio": "Lesions recents."}})
    stages.append((third, "Urgent: guarda provisional pendent (equip de primera valoració, IMAS)"))

    fourth = notify(camins, "Manacor", "Laia", "Riera Font", date(2014, 11, 5))
    work_open_tasks(camins, fourth, ["registre_notificacio", "valorar_urgencia", "visita_domiciliaria"])
    stages.append((fourth, "Investigació: informes social i educatiu pendents"))

    fifth = notify(camins, "Manacor", "Pau", "Oliver Bauzà", date(2011, 5, 30))
    work_open_tasks(camins, fifth, ["registre_notificacio", "valorar_urgencia", "visita_domiciliaria",
                                    "informe_social", "informe_educatiu", "valoracio_gravetat"],
                    {"valoracio_gravetat": SEVERITY_SCORES["greu"]})
    stages.append((fifth, "Investigació: valoració greu pendent de validar (coordinador/a, Manacor)"))

    sixth = notify(camins, "Son Servera", "Nil", "Massanet Roig", date(2016, 9, 9))
    work_open_tasks(camins, sixth, ["registre_notificacio", "valorar_urgencia", "visita_domiciliaria",
                                    "informe_social", "informe_educatiu", "valoracio_gravetat",
                                    "validar_valoracio"], {"valoracio_gravetat": SEVERITY_SCORES["desemparament"]})
    stages.append((sixth, "Derivat a l'IMAS: decisió pendent, termini de 20 dies en marxa (art. 120.1)"))

    seventh = notify(camins, "Inca", "Clara", "Amengual Serra", date(2013, 2, 17))
    work_open_tasks(camins, seventh, ["registre_notificacio", "valorar_urgencia", "visita_domiciliaria",
                                      "informe_social", "informe_educatiu", "valoracio_gravetat",
                                      "validar_valoracio"], {"valoracio_gravetat": SEVERITY_SCORES["sense_risc"]})
    stages.append((seventh, "Tancat: valoració sense risc"))

    eighth = notify(camins, "Palma", "Biel", "Salom Pizà", date(2024, 1, 20))
    work_open_tasks(camins, eighth, ["registre_notificacio", "valorar_urgencia", "visita_domiciliaria",
                                     "informe_social", "informe_educatiu", "valoracio_gravetat",
                                     "validar_valoracio"], {"valoracio_gravetat": SEVERITY_SCORES["moderat"]})
    stages.append((eighth, "Intervenció municipal: projecte d'intervenció pendent (infant de 2 anys; revisions "
                           "cada 3 mesos fins als 3 anys)"))
    return DEMO_USERS, stages
