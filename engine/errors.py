"""Errors the engine raises; the service maps each to an HTTP status."""
from __future__ import annotations

from dataclasses import asdict, dataclass


class EngineError(Exception):
    """Base class; `str(err)` is safe to show to the user."""


class NotFound(EngineError):
    pass


class Conflict(EngineError):
    """A lost race or a state that no longer allows the action (HTTP 409)."""


class InstanceSuspended(Conflict):
    """The instance is suspended: nothing moves it but a resume or a cancel (HTTP 409)."""


class Rejected(EngineError):
    """The request is well-formed but not acceptable (HTTP 422)."""


@dataclass
class Problem:
    file: str
    message: str
    element_id: str | None = None
    line: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = self.file
        if self.line:
            where += f":{self.line}"
        if self.element_id:
            where += f" [{self.element_id}]"
        return f"{where}: {self.message}"


class DeployError(EngineError):
    """A bundle that fails the deploy checks. `lint` holds the modelling-rule findings
    (engine.lint.Finding) of the diagrams that could be read, so that a modeler sees them too."""

    def __init__(self, problems: list[Problem], lint: list | None = None):
        self.problems = problems
        self.lint = lint or []
        super().__init__("; ".join(str(p) for p in problems[:5]))


class IncidentOpened(EngineError):
    """The step failed inside the diagram (script, service task, ...).

    The instance is unchanged; the failed action is kept on the incident so that
    a retry replays it.
    """

    def __init__(self, incident_id: int, instance_id: int, element_id: str | None, message: str):
        self.incident_id = incident_id
        self.instance_id = instance_id
        self.element_id = element_id
        super().__init__(f"incident {incident_id} at {element_id or 'unknown element'}: {message}")


class Forbidden(EngineError):
    """The caller's role does not allow this action at all (HTTP 403)."""


class Invalid(EngineError):
    """Input that fails validation, with a message per field (HTTP 422)."""

    def __init__(self, errors: dict[str, list[str]], message: str = "the submission is not valid"):
        self.errors = errors
        super().__init__(message)


class AuthenticationFailed(EngineError):
    """Wrong credentials (HTTP 401)."""


class TooManyAttempts(EngineError):
    """Too many failed logins in a while (HTTP 429); `retry_after` is in whole seconds."""

    def __init__(self, retry_after: int, message: str = "too many failed logins; try again later"):
        self.retry_after = retry_after
        super().__init__(message)


class ScenariosFailed(DeployError):
    """A bundle whose scenario tests (engine/scenario_run.py) fail: refused unless the deploy gives a
    reason to go ahead anyway. Each problem is one failure, on the scenario file."""

    def __init__(self, problems: list[Problem], passed: int, failed: int):
        super().__init__(problems)
        self.passed = passed
        self.failed = failed
