"""Org units of Mallorca as data: IMAS, its sections, the comarques, the 53 municipalities.

The grouping is marked *assumed* in DOMAIN.md; it lives here as data so that a
correction is a data change, not a code change.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAS_CODE = "imas"


@dataclass(frozen=True)
class Unit:
    code: str
    name: str
    kind: str  # imas | section | comarca | municipality
    parent: str | None  # a comarca's parent is its section; a municipality's is its comarca
    section: str | None = None


SECTIONS = {"imas-llevant": "IMAS Llevant", "imas-ponent": "IMAS Ponent"}

COMARQUES = {
    # code: (name, section)
    "tramuntana": ("Tramuntana", "imas-ponent"),
    "raiguer": ("Raiguer", "imas-ponent"),
    "nord-i-pla": ("Nord i Pla", "imas-llevant"),
    "llevant-i-migjorn": ("Llevant i Migjorn", "imas-llevant"),
    "palma-serveis-propis": ("Palma (serveis propis)", "imas-ponent"),
}

MUNICIPALITIES_BY_COMARCA = {
    "tramuntana": ["Andratx", "Banyalbufar", "Bunyola", "Calvià", "Deià", "Escorca", "Esporles", "Estellencs",
                   "Fornalutx", "Puigpunyent", "Sóller", "Valldemossa"],
    "raiguer": ["Alaró", "Binissalem", "Búger", "Campanet", "Consell", "Inca", "Lloseta", "Mancor de la Vall",
                "Marratxí", "Santa Maria del Camí", "Selva"],
    "nord-i-pla": ["Alcúdia", "Algaida", "Ariany", "Costitx", "Lloret de Vistalegre", "Llubí",
                   "Maria de la Salut", "Montuïri", "Muro", "Petra", "Pollença", "Sa Pobla", "Sant Joan",
                   "Santa Eugènia", "Santa Margalida", "Sencelles", "Sineu", "Vilafranca de Bonany"],
    "llevant-i-migjorn": ["Artà", "Campos", "Capdepera", "Felanitx", "Llucmajor", "Manacor", "Porreres",
                          "Sant Llorenç des Cardassar", "Santanyí", "Ses Salines", "Son Servera"],
    "palma-serveis-propis": ["Palma"],
}


def slug(name: str) -> str:
    table = str.maketrans("àáèéíïòóúüçÀÁÈÉÍÏÒÓÚÜÇ·'", "aaeeiioouucAAEEIIOOUUC--")
    return "-".join(name.translate(table).lower().replace("-", " ").split())


def all_units() -> list[Unit]:
    units = [Unit(IMAS_CODE, "IMAS", "imas", None)]
    units += [Unit(code, name, "section", IMAS_CODE, code) for code, name in SECTIONS.items()]
    for code, (name, section) in COMARQUES.items():
        units.append(Unit(code, name, "comarca", section, section))
        for municipality in MUNICIPALITIES_BY_COMARCA[code]:
            units.append(Unit(slug(municipality), municipality, "municipality", code, section))
    return units


UNITS: dict[str, Unit] = {u.code: u for u in all_units()}
_BY_NAME = {u.name.casefold(): u for u in UNITS.values()}


def find_unit(name_or_code: str) -> Unit | None:
    """Find a unit by Catalan name ('Son Servera', 'IMAS Llevant') or code ('son-servera')."""
    key = (name_or_code or "").strip()
    return UNITS.get(key) or _BY_NAME.get(key.casefold()) or UNITS.get(slug(key))


def municipalities() -> list[Unit]:
    return [u for u in UNITS.values() if u.kind == "municipality"]


def comarca_of(municipality_code: str) -> Unit:
    return UNITS[UNITS[municipality_code].parent]


def section_of(municipality_code: str) -> Unit:
    return UNITS[UNITS[municipality_code].section]
