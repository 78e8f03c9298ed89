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


def authenticated(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        token = bearer_token()
        if token is None:
            return _unauthorized("a bearer token is required")
        try:
            g.principal = camins().principal(token)
        except NotFound:
            return _unauthorized("the token is invalid or expired")
        g.token = token
        return view(*args, **kwargs)

    return wrapper


def _unauthorized(detail: str):
    response = problem(401, "Unauthorized", detail)
    response.headers["WWW-Authenticate"] = 'Bearer realm="camins"'
    return response
