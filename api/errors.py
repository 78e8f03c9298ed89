"""Every error leaves as application/problem+json (RFC 9457)."""
from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from engine.errors import (
    AuthenticationFailed,
    Conflict,
    DeployError,
    Forbidden,
    IncidentOpened,
    Invalid,
    NotFound,
    Rejected,
    ScenariosFailed,
    TooManyAttempts,
)
from engine.xmlsafe import MAX_XML_BYTES

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str | None = None, **extra):
    body = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update({k: v for k, v in extra.items() if v is not None})
    response = jsonify(body)
    response.status_code = status
    response.mimetype = PROBLEM
    return response


def _flatten(messages, prefix="") -> dict[str, list[str]]:
    """webargs nests errors by location and field; users want 'field.sub': [messages]."""
    flat: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                flat.update(_flatten(value, name))
            else:
                flat[name] = [str(v) for v in (value if isinstance(value, list) else [value])]
    return flat


def register(app: Flask) -> None:
    @app.errorhandler(Invalid)
    def _invalid(err: Invalid):
        return problem(422, "Invalid input", str(err), errors=err.errors)

    @app.errorhandler(Rejected)
    def _rejected(err):
        return problem(422, "Rejected", str(err))

    @app.errorhandler(DeployError)
    def _deploy(err: DeployError):
        return problem(422, "Invalid bundle", str(err), problems=[p.as_dict() for p in err.problems],
                       lint=[f.as_dict() for f in err.lint])

    @app.errorhandler(ScenariosFailed)
    def _scenarios_failed(err: ScenariosFailed):
        return problem(422, "Scenarios failed", f"{err.failed} of {err.passed + err.failed} scenarios failed; "
                       "deploy with an override_reason to deploy anyway (it is recorded)",
                       problems=[p.as_dict() for p in err.problems],
                       scenarios={"passed": err.passed, "failed": err.failed,
                                  "failures": [f"{p.file}: {p.message}" for p in err.problems]})

    @app.errorhandler(NotFound)
    def _not_found(err):
        return problem(404, "Not found", str(err))

    @app.errorhandler(AuthenticationFailed)
    def _auth_failed(err):
        response = problem(401, "Unauthorized", str(err))
        response.headers["WWW-Authenticate"] = 'Bearer realm="camins"'
        return response

    @app.errorhandler(TooManyAttempts)
    def _too_many(err: TooManyAttempts):
        response = problem(429, "Too Many Requests", str(err))
        response.headers["Retry-After"] = str(err.retry_after)
        return response

    @app.errorhandler(Forbidden)
    def _forbidden(err):
        return problem(403, "Forbidden", str(err))

    @app.errorhandler(Conflict)
    def _conflict(err):
        return problem(409, "Conflict", str(err))

    @app.errorhandler(IncidentOpened)
    def _incident(err: IncidentOpened):
        return problem(409, "Incident", "The process could not continue; an incident was opened and your "
                       "submission is kept with it so that a retry applies it. " + str(err),
                       incident_id=err.incident_id, instance_id=err.instance_id, element_id=err.element_id)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(err):
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        size = f"{limit / (1024 * 1024):.0f} MB" if limit and limit >= 1024 * 1024 else f"{limit} bytes"
        return problem(413, "Request Entity Too Large", f"The request is larger than this server accepts "
                       f"({size}); a diagram bundle's files may be at most "
                       f"{MAX_XML_BYTES // (1024 * 1024)} MB each.")

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException):
        errors = None
        data = getattr(err, "data", None) or {}
        if "messages" in data:
            nested = data["messages"]
            # Drop the location level (json, query, form, files) that webargs adds.
            merged = {}
            for value in nested.values():
                merged.update(value if isinstance(value, dict) else {"_schema": value})
            errors = _flatten(merged)
        response = problem(err.code or 500, err.name, data.get("message") or err.description, errors=errors)
        # Keep what the status needs besides the body, e.g. 405's Allow.
        for name, value in err.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("unexpected error (%s)", err.__class__.__name__)
        return problem(500, "Internal Server Error", "An unexpected error happened; it has been logged.")
