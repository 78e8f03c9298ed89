"""What the domain layer tells the engine. The engine itself knows no roles or cases."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Routing:
    """Where a new human task goes: a role, the org unit scoping it, maybe a person."""

    role: str | None
    org_unit: str | None
    assignee: str | None = None


class EngineHooks:
    """Default hooks: every lane is its own role, nothing is scoped."""

    def resolve_lane(self, lane_name: str) -> str | None:
        return lane_name

    def check_form(self, name: str, content: bytes) -> None:
        """Raise ValueError if the form file is not acceptable."""

    def property_problems(self, properties: dict) -> list[str]:
        """Problems with an element's extension properties, reported at deploy."""
        return []

    def route_task(self, session, business_key: str, role: str | None, element) -> Routing:
        return Routing(role=role, org_unit=None)

    def call_service(self, session, instance, operation: str, params: dict) -> Any:
        raise ValueError(f"unknown service operation '{operation}'")

    def on_task_completed(self, session, human_task, actor: str | None) -> None:
        """Called inside the step transaction after a human task is completed."""

    def on_message_thrown(self, session, instance, name: str, payload: dict) -> None:
        """Called inside the step transaction when an instance throws a message."""

    def on_message_received(self, session, instance, name: str, payload: dict) -> None:
        """Called inside the step transaction when an instance catches a message."""

    def on_instance_ended(self, session, instance) -> None:
        """Called inside the step transaction when an instance completes."""

    def owned_processes(self) -> set[str]:
        """Processes that live only for the instance whose message started their chain.

        Such an instance answers only up its chain, and is cancelled when the instance that
        started the chain ends (e.g. the reviews of a measure that is over).
        """
        return set()

    def start_data(self, session, business_key: str) -> dict:
        """Facts every new instance of this business key starts with (they override given data)."""
        return {}

    def on_elements(self, session, instance, entered: list, completed: list, now) -> None:
        """Called inside the step transaction with the elements (ElementInfo) entered and completed."""
