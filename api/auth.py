"""Bearer-token authentication for the API."""
from __future__ import annotations

import functools

from flask import current_app, g, request

from engine.errors import NotFound

from .errors import problem


def camins():
    return current_app.extensions["camins"]


def current_principal():
    return g.principal


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# Paths under /api/ that answer without a token: logging in, and the API's own documentation.
PUBLIC_PATHS = ("/api/auth/token", "/api/openapi.json", "/api/docs")


def require_token():
    """Before every request: everything under /api/ but PUBLIC_PATHS needs a valid bearer token,
    checked before the query or the body is even parsed, so an anonymous caller learns nothing
    (not which input is wrong, not which routes exist): only 401."""
    path = request.path
    if not path.startswith("/api/") or any(path == p or path.startswith(p + "/") for p in PUBLIC_PATHS):
        return None
    return _authenticate()


def _authenticate():
    token = bearer_token()
    if token is None:
        return _unauthorized("a bearer token is required")
    try:
        g.principal = camins().principal(token)
    except NotFound:
        return _unauthorized("the token is invalid or expired")
    g.token = token
    return None


def authenticated(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if "principal" not in g:  # require_token already did it for every path under /api/
            failure = _authenticate()
            if failure is not None:
                return failure
        return view(*args, **kwargs)

    return wrapper


def _unauthorized(detail: str):
    response = problem(401, "Unauthorized", detail)
    response.headers["WWW-Authenticate"] = 'Bearer realm="camins"'
    return response
