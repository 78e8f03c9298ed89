"""Supervisors' read-only views: a pathway's overview for a diagram overlay, its instances, the workload."""
from __future__ import annotations

from dataclasses import asdict

from flask import g
from flask.views import MethodView
from flask_smorest import Blueprint

from workflows.supervision import TerritoryFilter

from .. import schemas as s
from ..auth import authenticated, camins
from .documented import answers as _answers

supervision_blp = Blueprint(
    "supervision", __name__, url_prefix="/api/supervision",
    description="Read-only views for supervisors (SSCB coordinators: their municipality; IMAS section heads: "
                "their section). Filters narrow the scope, never widen it")


def _territory(args: dict) -> TerritoryFilter:
    return TerritoryFilter(args.get("municipality"), args.get("comarca"), args.get("section"))


@supervision_blp.route("/processes/<string:process_key>/overview")
class OverviewView(MethodView):
    @supervision_blp.arguments(s.OverviewArgs, location="query")
    @supervision_blp.response(200, s.ProcessOverview)
    @_answers(supervision_blp, 401, 403, 404)
    @authenticated
    def get(self, args, process_key):
        """Per element of the process: running instances there, instances with an open incident there, overdue
        tasks there; totals; legal clocks at risk or breached. Counts only, no case: supervisors for their
        scope, analysts for any territory. 404 for a process never deployed, 422 for a version it lacks."""
        return camins().supervision_overview(g.principal, process_key, args.get("version"), _territory(args))


@supervision_blp.route("/processes/<string:process_key>/instances")
class SupervisedInstancesView(MethodView):
    @supervision_blp.arguments(s.SupervisedInstancesArgs, location="query")
    @supervision_blp.response(200, s.SupervisedInstancePage)
    @_answers(supervision_blp, 401, 403, 404)
    @authenticated
    def get(self, args, process_key):
        """Supervisors: running instances of the process in their scope, oldest first (what an overview count
        stands for). Each case shown is written to the access log."""
        return asdict(camins().supervised_instances(
            g.principal, process_key, args.get("element"), args.get("version"), args.get("incident"),
            args.get("overdue"), _territory(args), args["page"], args["per_page"]))


@supervision_blp.route("/workload")
class WorkloadView(MethodView):
    @supervision_blp.arguments(s.TerritoryArgs, location="query")
    @supervision_blp.response(200, s.Workload)
    @_answers(supervision_blp, 401, 403)
    @authenticated
    def get(self, args):
        """Supervisors: open tasks of the cases in their scope, per professional they are assigned to and per
        role queue where they wait, with how many are overdue."""
        return camins().workload(g.principal, _territory(args))
