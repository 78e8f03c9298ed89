"""What every blueprint's operations share in their OpenAPI documentation."""
from __future__ import annotations

from http import HTTPStatus

from flask_smorest import Blueprint


def answers(blp: Blueprint, *statuses: int):
    """Document the problem+json answers an operation gives besides its success. A body that is not
    JSON is a 400, one over CAMINS_MAX_UPLOAD_BYTES a 413; 422 for schema errors is added by
    `arguments`."""
    def decorator(view):
        for status in sorted(statuses, reverse=True):
            view = blp.alt_response(status, response=HTTPStatus(status).name)(view)
        return view

    return decorator
