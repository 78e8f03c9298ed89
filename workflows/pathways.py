"""The pathway catalogue: bundled diagrams and what their hand-off messages mean for a case."""
from __future__ import annotations

from pathlib import Path

BUNDLED_DIAGRAMS = Path(__file__).resolve().parent.parent / "bpmn"

# The pathway a new notification starts.
NOTIFICATION_PATHWAY = "deteccio"

# The reviews of a plan or measure: they answer only the pathway that scheduled them, and stop
# when it ends.
OWNED_PROCESSES = ("revisio",)

# Opens a supervisor's task when a legal clock is breached.
ESCALATION_PATHWAY = "escalacio"

# Hand-off message → (case status, legal status or None to keep it).
HANDOFFS: dict[str, tuple[str, str | None]] = {
    "investigacio_iniciada": ("investigation", None),
    "proteccio_urgent": ("urgent_protection", "guarda_provisional"),
    "valoracio_sense_risc": ("closed_no_risk", None),
    "derivacio_intervencio_municipal": ("municipal_intervention", None),
    "derivacio_proteccio_imas": ("imas_protection", None),
    "intervencio_tancada": ("closed", None),
    "inici_reunificacio": ("family_reunification", "tutela"),
    "inici_acolliment": ("foster_care", "tutela"),
    "inici_adopcio": ("adoption", "tutela"),
    "inici_emancipacio": ("emancipation", None),
    "reunificacio_tancada": ("closed_reunified", "none"),
    "acolliment_finalitzat": ("foster_care_ended", None),
    "adopcio_constituida": ("closed_adopted", "none"),
    "adopcio_no_constituida": ("adoption_not_constituted", None),
    "emancipacio_finalitzada": ("closed_emancipated", "none"),
    "emancipacio_rebutjada": ("emancipation_refused", None),
}

LEGAL_STATUSES = ("none", "guarda_provisional", "guarda", "tutela")

SEVERITIES = ("sense_risc", "lleu", "moderat", "greu", "desemparament")
