"""The Flask service: app factory."""
from __future__ import annotations

import os
from http import HTTPStatus
from pathlib import Path

from flask import Flask, abort, send_from_directory
from flask_smorest import Api
from flask_smorest.utils import prepare_response
from werkzeug.middleware.proxy_fix import ProxyFix

from workflows.service import Camins

from . import auth, errors, textguard
from .routes.core import BLUEPRINTS
from .schemas import Problem

REPO_ROOT = Path(__file__).resolve().parent.parent
SWAGGER_ASSETS = REPO_ROOT / "node_modules" / "swagger-ui-dist"
DEFAULT_DB = "sqlite:///" + str(REPO_ROOT / "instance" / "camins.db")


class ProblemApi(Api):
    """Documents errors as they leave (application/problem+json, api/errors.py), and no catch-all
    'default' answer: every operation lists the statuses it can give (api/routes/core.py)."""

    ERROR_SCHEMA = Problem
    DEFAULT_ERROR_RESPONSE_NAME = None

    def _register_responses(self):
        for status in HTTPStatus:
            response = {"description": status.phrase}
            if status >= 400:
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, errors.PROBLEM)
            self.spec.components.response(status.name, response, lazy=True)


def database_url() -> str:
    return os.environ.get("CAMINS_DATABASE_URL", DEFAULT_DB)


def create_app(camins: Camins | None = None, config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_path=str(REPO_ROOT / "instance"))
    app.config.update(
        API_TITLE="camins",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="/api/docs/assets/",
        MAX_CONTENT_LENGTH=int(os.environ.get("CAMINS_MAX_UPLOAD_BYTES", 25 * 1024 * 1024)),
        SECRET_KEY=os.environ.get("CAMINS_SECRET_KEY") or os.urandom(32),
        API_SPEC_OPTIONS={
            "info": {"description": "BPMN pathways for child protection in Mallorca. All routes but "
                                    "/api/auth/token need `Authorization: Bearer <token>`."},
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearerAuth": []}],
        },
    )
    if config:
        app.config.update(config)
    if camins is None:
        os.makedirs(app.instance_path, exist_ok=True)
        camins = Camins(database_url(), script_time_limit=float(os.environ.get("CAMINS_SCRIPT_TIME_LIMIT", "1.0")))
    app.extensions["camins"] = camins

    api = ProblemApi(app)
    for blueprint in BLUEPRINTS:
        api.register_blueprint(blueprint)
    errors.register(app)
    app.before_request(auth.require_token)
    proxies = int(os.environ.get("CAMINS_TRUSTED_PROXIES", "0"))
    if proxies > 0:
        # Behind that many reverse proxies, the client address (login limits) is the one they forward.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)
    textguard.register(app)

    @app.get("/api/docs/assets/<path:name>")
    def swagger_assets(name):
        if not SWAGGER_ASSETS.is_dir():
            abort(404)
        return send_from_directory(SWAGGER_ASSETS, name)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app
