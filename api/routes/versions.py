"""Analysts: the versions of a pathway (list, compare, retire) and the migration of running instances."""
from __future__ import annotations

from flask import g
from flask.views import MethodView
from flask_smorest import Blueprint

from .. import schemas as s
from ..auth import authenticated, camins
from .documented import answers as _answers

versions_blp = Blueprint("versions", __name__, url_prefix="/api/definitions",
                         description="Versions of a pathway: list, compare, retire (analysts)")
migrations_blp = Blueprint("migrations", __name__, url_prefix="/api/migrations",
                           description="Moving running instances to another version of their pathway (analysts)")


@versions_blp.route("/<string:process_key>/versions")
class VersionsView(MethodView):
    @versions_blp.response(200, s.VersionList)
    @_answers(versions_blp, 401, 403, 404)
    @authenticated
    def get(self, process_key):
        """Every version of a pathway, newest first: status (active or retired), deployment, content hash,
        scenario verdict and how many of its instances are unfinished."""
        return {"items": camins().list_versions(g.principal, process_key)}


@versions_blp.route("/<string:process_key>/diff")
class DiffView(MethodView):
    @versions_blp.arguments(s.VersionDiffArgs, location="query")
    @versions_blp.response(200, s.VersionDiff)
    @_answers(versions_blp, 401, 403, 404)
    @authenticated
    def get(self, args, process_key):
        """What changed between two versions (`?from=1&to=2`): elements by id (type, name, lane, properties such
        as the form, scripts, conditions, timer expressions, connections), sequence flows and files, each
        added, removed or changed."""
        return camins().diff_versions(g.principal, process_key, args["from_version"], args["to_version"])


@versions_blp.route("/<string:process_key>/versions/<int:version>/retire")
class RetireView(MethodView):
    @versions_blp.arguments(s.RetireRequest)
    @versions_blp.response(200, s.VersionView)
    @_answers(versions_blp, 400, 401, 403, 404, 409, 413)
    @authenticated
    def post(self, body, process_key, version):
        """Retire a version, with the reason (recorded with who and when). It starts no new instance, by hand
        or by message; its running instances go on. Retiring it again is a 409; starting a pathway whose
        every version is retired is a 409 too."""
        return camins().retire_version(g.principal, process_key, version, body["reason"])


@migrations_blp.route("/preview")
class MigrationPreviewView(MethodView):
    @migrations_blp.arguments(s.MigrationPreviewRequest)
    @migrations_blp.response(200, s.MigrationReport)
    @_answers(migrations_blp, 400, 401, 403, 404, 413)
    @authenticated
    def post(self, body):
        """Which instances can move from one version to another and, for each that cannot, why (a completed
        or started task that the new version changed or removed, a wait at a removed element, an instance
        that is over). Writes nothing."""
        return camins().preview_migration(g.principal, body["process_key"], body["from_version"],
                                          body["to_version"], body.get("instance_ids"))


@migrations_blp.route("")
class MigrationsView(MethodView):
    @migrations_blp.arguments(s.MigrationRequest)
    @migrations_blp.response(200, s.MigrationReport)
    @_answers(migrations_blp, 400, 401, 403, 404, 413)
    @authenticated
    def post(self, body):
        """Move instances to another version, each in a transaction of its own: the report says, per instance,
        migrated or refused with the reasons. A moved instance's open tasks, timers and message subscriptions
        follow the new version, and its history records `instance_migrated` with the reason."""
        return camins().migrate_instances(g.principal, body["process_key"], body["from_version"],
                                          body["to_version"], body.get("instance_ids"), body["reason"])
