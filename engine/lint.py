"""Modelling rules for BPMN diagrams, in the spirit of bpmnlint.

The deploy checks of `bundle.py` refuse what the engine cannot run. These rules catch what it
would run but a reader would misread, or what would leave a token stuck: a task that splits the
flow without a gateway, a gateway that can find no way out, an end that nothing reaches.

`lint(tree, file)` takes a parsed BPMN document (see `xmlsafe.parse_xml`) and returns one
`Finding` per broken rule, each naming the rule, the element (so a modeler can mark it on the
diagram), the line and a message. Rules apply within each scope: a process, and each subprocess
(an event subprocess included) on its own, with the sequence flows drawn inside it.

Connections are read from the sequence flows' `sourceRef` and `targetRef`; the `incoming` and
`outgoing` children of a node are redundant copies that modelers do not always keep in step.
"""
from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from lxml import etree

BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
NS = {"bpmn": BPMN_NS, "spiffworkflow": "http://spiffworkflow.org/bpmn/schema/1.0/core"}
_PROPERTIES = "bpmn:extensionElements/spiffworkflow:properties/spiffworkflow:property"
ERROR = "error"
WARNING = "warning"

EVENTS = frozenset({"startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent"})
GATEWAYS = frozenset({"exclusiveGateway", "inclusiveGateway", "parallelGateway", "eventBasedGateway",
                      "complexGateway"})
SUBPROCESSES = frozenset({"subProcess", "transaction", "adHocSubProcess"})
ACTIVITIES = frozenset({"task", "userTask", "manualTask", "serviceTask", "scriptTask", "sendTask", "receiveTask",
                        "businessRuleTask", "callActivity"}) | SUBPROCESSES
FLOW_NODES = EVENTS | GATEWAYS | ACTIVITIES
# Gateways that choose among their outgoing flows by condition.
CONDITIONAL_GATEWAYS = frozenset({"exclusiveGateway", "inclusiveGateway"})
# Gateways whose question deserves a label when they split (a parallel split asks nothing).
CHOOSING_GATEWAYS = CONDITIONAL_GATEWAYS | {"eventBasedGateway", "complexGateway"}


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    message: str
    element_id: str | None
    line: int | None = None
    file: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        element = f" [{self.element_id}]" if self.element_id else ""
        return f"{where}{element} {self.severity} {self.rule}: {self.message}"


def _local(node) -> str:
    return etree.QName(node).localname


def _bpmn_children(element, names) -> Iterator:
    for child in element:
        if isinstance(child.tag, str) and etree.QName(child).namespace == BPMN_NS and _local(child) in names:
            yield child


@dataclass
class Scope:
    """One process or subprocess: its own flow nodes and the sequence flows drawn inside it."""
    element: etree._Element
    nodes: dict[str, etree._Element] = field(default_factory=dict)
    outgoing: dict[str, list[etree._Element]] = field(default_factory=dict)
    incoming: dict[str, list[etree._Element]] = field(default_factory=dict)
    boundary: dict[str, list[etree._Element]] = field(default_factory=dict)  # activity id → attached events

    @classmethod
    def of(cls, element) -> Scope:
        scope = cls(element)
        for node in _bpmn_children(element, FLOW_NODES):
            if node.get("id"):
                scope.nodes[node.get("id")] = node
        for node_id in scope.nodes:
            scope.outgoing[node_id], scope.incoming[node_id], scope.boundary[node_id] = [], [], []
        for flow in _bpmn_children(element, {"sequenceFlow"}):
            # A flow to an element outside this scope is a structural error the BPMN parser reports.
            if flow.get("sourceRef") in scope.nodes and flow.get("targetRef") in scope.nodes:
                scope.outgoing[flow.get("sourceRef")].append(flow)
                scope.incoming[flow.get("targetRef")].append(flow)
        for node in scope.nodes.values():
            if _local(node) == "boundaryEvent" and node.get("attachedToRef") in scope.boundary:
                scope.boundary[node.get("attachedToRef")].append(node)
        return scope

    @property
    def ad_hoc(self) -> bool:
        return _local(self.element) == "adHocSubProcess"

    def successors(self, node_id: str) -> list[str]:
        """Where a token can go next: along the outgoing flows, or out through an attached boundary event."""
        return ([f.get("targetRef") for f in self.outgoing[node_id]]
                + [b.get("id") for b in self.boundary[node_id]])

    def predecessors(self, node_id: str) -> list[str]:
        node = self.nodes[node_id]
        attached_to = [node.get("attachedToRef")] if _local(node) == "boundaryEvent" else []
        return [f.get("sourceRef") for f in self.incoming[node_id]] + [a for a in attached_to if a in self.nodes]

    def entry_points(self) -> list[str]:
        """Start events; in a scope without one, BPMN starts every node that nothing flows into."""
        starts = [i for i, n in self.nodes.items() if _local(n) == "startEvent"]
        if starts:
            return starts
        return [i for i, n in self.nodes.items()
                if not self.incoming[i] and _local(n) != "boundaryEvent" and not _is_event_subprocess(n)]


def scopes(tree) -> list[Scope]:
    root = tree.getroot() if hasattr(tree, "getroot") else tree
    found = []
    for process in root.iter(f"{{{BPMN_NS}}}process"):
        found.append(Scope.of(process))
        found.extend(Scope.of(sub) for name in SUBPROCESSES for sub in process.iter(f"{{{BPMN_NS}}}{name}"))
    return found


# ---------------------------------------------------------------------------------------- helpers
def _is_event_subprocess(node) -> bool:
    return _local(node) == "subProcess" and node.get("triggeredByEvent", "false").strip().lower() == "true"


def _has_condition(flow) -> bool:
    condition = flow.find(f"{{{BPMN_NS}}}conditionExpression")
    return condition is not None and bool((condition.text or "").strip())


def _is_default(node, flow) -> bool:
    return bool(node.get("default")) and node.get("default") == flow.get("id")


def _label(node) -> str:
    return (node.get("name") or "").strip()


def _kind(node) -> str:
    """'userTask' → 'user task', for messages."""
    return re.sub(r"(?<!^)([A-Z])", lambda m: " " + m.group(1).lower(), _local(node))


def _describe(node) -> str:
    label = _label(node)
    return f"{_kind(node)} '{label}'" if label else f"{_kind(node)} {node.get('id')}"


def _event_definitions(node) -> list[str]:
    return [_local(c) for c in node if isinstance(c.tag, str) and _local(c).endswith("EventDefinition")]


def _diverging(scope: Scope, node_id: str) -> bool:
    return len(scope.outgoing[node_id]) > 1


def _reach(start: list[str], step: Callable[[str], list[str]]) -> set[str]:
    seen, queue = set(start), deque(start)
    while queue:
        for nxt in step(queue.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


Report = Callable[[str, str, etree._Element, str], None]  # rule, severity, element, message


# ------------------------------------------------------------------------------------------ rules
def no_implicit_split(scope: Scope, report: Report) -> None:
    """An activity or event with more than one outgoing sequence flow that has no condition and is
    not its default flow.

    BPMN sends a token down every such flow at once: a parallel split that reads like a choice.
    Draw a parallel gateway for a split, an exclusive gateway for a choice.
    """
    for node_id, node in scope.nodes.items():
        if _local(node) in GATEWAYS:
            continue
        plain = [f for f in scope.outgoing[node_id] if not _has_condition(f) and not _is_default(node, f)]
        if len(plain) > 1:
            report("no-implicit-split", ERROR, node,
                   f"{_describe(node)} splits into {len(plain)} unconditional flows without a gateway; draw a "
                   "parallel gateway to run them together, or an exclusive gateway to choose one")


def no_implicit_join(scope: Scope, report: Report) -> None:
    """An element other than a gateway where two incoming sequence flows can carry tokens at the
    same time.

    It looks as if it waited for both, but it runs once for every token that arrives. Two flows
    can carry tokens at once when two branches of one fork reach them: a parallel, inclusive or
    complex gateway that splits, an activity or event that splits (several outgoing flows that
    are not its default), or an activity with a non-interrupting boundary event (the activity
    goes on beside the event's path). A branch is followed along sequence flows and boundary
    events, and stops at a joining parallel, inclusive or complex gateway (which merges its
    tokens into one) and at the fork itself. Merging alternative paths or a loop back into an
    element is not reported: only one token arrives at a time, which is what the drawing says.
    A plain end event is exempt (it only consumes tokens); an end event that throws (a message,
    a signal) is not, since it would throw once per token.
    """
    candidates = {node_id: {f.get("id") for f in scope.incoming[node_id]} for node_id, node in scope.nodes.items()
                  if len(scope.incoming[node_id]) > 1 and _local(node) not in GATEWAYS
                  and not (_local(node) == "endEvent" and not _event_definitions(node))}
    forks = [i for i in scope.nodes if _branches(scope, i)] if candidates else []
    if len(forks) * len(scope.nodes) > MAX_JOIN_ANALYSIS:
        report("no-implicit-join", WARNING, scope.element,
               f"{_describe(scope.element)} is too large to look for implicit joins ({len(forks)} forks)")
        return
    flagged: set[str] = set()
    for fork_id in forks:
        branches = _branch_flows(scope, fork_id)
        for node_id, incoming in candidates.items():
            if node_id not in flagged and _two_branches_meet(branches, incoming):
                flagged.add(node_id)
                node = scope.nodes[node_id]
                report("no-implicit-join", ERROR, node,
                       f"{_describe(node)} joins flows that the split at {_describe(scope.nodes[fork_id])} runs at "
                       "the same time, without a gateway: it would run once for each of them; wait for all with a "
                       "parallel gateway, or merge them with an exclusive gateway if running it twice is meant")


# Forks × flow nodes above which a scope is not searched for implicit joins (a deploy stays fast).
MAX_JOIN_ANALYSIS = 500_000
_SYNCHRONISING = frozenset({"parallelGateway", "inclusiveGateway", "complexGateway"})


def _branches(scope: Scope, node_id: str) -> list[tuple[list, list[str]]]:
    """The branches a fork starts, each as (its first flows, the nodes they lead to); [] if not a fork."""
    node, kind = scope.nodes[node_id], _local(scope.nodes[node_id])
    flows = scope.outgoing[node_id]
    if kind in GATEWAYS:
        splitting = flows if kind in _SYNCHRONISING else []  # exclusive and event-based ones send one token on
    else:
        splitting = [f for f in flows if not _is_default(node, f)]  # a default runs only when nothing else does
    branches = [([f], [f.get("targetRef")]) for f in splitting] if len(splitting) > 1 else []
    loose = [b for b in scope.boundary[node_id] if b.get("cancelActivity", "true").strip().lower() == "false"]
    if loose:
        branches = branches or [(flows, [f.get("targetRef") for f in flows])]
        branches += [([], [b.get("id")]) for b in loose]
    return branches


def _branch_flows(scope: Scope, fork_id: str) -> list[set[str]]:
    """For each branch of a fork, the ids of the sequence flows its token can take before a join merges it."""
    result = []
    for first_flows, first_nodes in _branches(scope, fork_id):
        taken = {f.get("id") for f in first_flows}
        seen = {n for n in first_nodes if n != fork_id}
        queue = deque(seen)
        while queue:
            current = queue.popleft()
            if _local(scope.nodes[current]) in _SYNCHRONISING and len(scope.incoming[current]) > 1:
                continue
            taken.update(f.get("id") for f in scope.outgoing[current])
            for nxt in scope.successors(current):
                if nxt not in seen and nxt != fork_id:
                    seen.add(nxt)
                    queue.append(nxt)
        result.append(taken)
    return result


def _two_branches_meet(branches: list[set[str]], incoming: set[str]) -> bool:
    """Do two different branches reach two different flows of `incoming`?"""
    hits = [taken & incoming for taken in branches]
    return any(first and other and len(first | other) > 1 for i, first in enumerate(hits) for other in hits[i + 1:])


def no_disconnected(scope: Scope, report: Report) -> None:
    """A flow node that lacks a sequence flow its kind needs.

    Start events need an outgoing flow; boundary events an outgoing flow (they are attached, so
    nothing flows into them); end events an incoming flow; every other activity, gateway and
    intermediate event both. Exempt: event subprocesses (an event starts them) and the contents of
    ad-hoc subprocesses (they need no order).
    """
    if scope.ad_hoc:
        return
    for node_id, node in scope.nodes.items():
        kind = _local(node)
        if _is_event_subprocess(node):
            continue
        needs_in = kind not in ("startEvent", "boundaryEvent")
        needs_out = kind != "endEvent"
        no_in = needs_in and not scope.incoming[node_id]
        no_out = needs_out and not scope.outgoing[node_id]
        if no_in and no_out:
            message = f"{_describe(node)} is not connected to any sequence flow"
        elif no_in:
            message = f"{_describe(node)} has no incoming sequence flow, so no token can reach it"
        elif no_out:
            message = (f"{_describe(node)} has no outgoing sequence flow: a token would stop here without "
                       "reaching an end event")
        else:
            continue
        report("no-disconnected", ERROR, node, message)


def label_required(scope: Scope, report: Report) -> None:
    """Elements whose name a reader needs, because the name is what the diagram says there.

    - every activity (the name is what the inbox and the history show);
    - every event, except a plain start or end event (no event definition) in a subprocess, where
      the subprocess's own name says it all; timer, message, error ... events and every event of a
      process must say what they wait for, send or mean;
    - every splitting exclusive, inclusive, event-based or complex gateway (its question);
    - every outgoing flow of a splitting exclusive or inclusive gateway (the answer it stands for).
    Joining gateways and parallel gateways need no name: their shape says what they do.
    """
    in_subprocess = _local(scope.element) in SUBPROCESSES
    for node_id, node in scope.nodes.items():
        kind = _local(node)
        plain_edge_event = kind in ("startEvent", "endEvent") and not _event_definitions(node)
        needs_label = (
            kind in ACTIVITIES
            or (kind in EVENTS and not (plain_edge_event and in_subprocess))
            or (kind in CHOOSING_GATEWAYS and _diverging(scope, node_id))
        )
        if needs_label and not _label(node):
            report("label-required", ERROR, node, f"{_kind(node)} {node_id} has no name: give it one that says "
                                                   f"{_what_to_say(kind)}")
        if kind in CONDITIONAL_GATEWAYS and _diverging(scope, node_id):
            for flow in scope.outgoing[node_id]:
                if not _label(flow):
                    report("label-required", ERROR, flow,
                           f"flow {flow.get('id')} leaves {_describe(node)} without a name: name the answer it "
                           "stands for (e.g. 'Sí', 'No')")


def _what_to_say(kind: str) -> str:
    if kind in GATEWAYS:
        return "the question it decides"
    if kind in EVENTS:
        return "what happens or is awaited there"
    return "the work done there"


def exclusive_gateway_default(scope: Scope, report: Report) -> None:
    """A splitting exclusive gateway (more than one outgoing flow) has a default flow, and a
    `default` names one of the gateway's own outgoing flows.

    Without a default, a value that no condition expected stops the case at the gateway with an
    incident. A gateway may go without one only when it says that its conditions cover every case:
    the property `exhaustive` (any non-empty value: say why) is the modeler's statement that an
    unexpected value must stop the case for a person to look at, rather than take a default branch.
    """
    for node_id, node in scope.nodes.items():
        if _local(node) != "exclusiveGateway":
            continue
        default = node.get("default")
        outgoing_ids = {f.get("id") for f in scope.outgoing[node_id]}
        if default and default not in outgoing_ids:
            report("exclusive-gateway-default", ERROR, node,
                   f"{_describe(node)} names '{default}' as its default flow, which does not leave this gateway")
        elif not default and _diverging(scope, node_id) and not _declared_exhaustive(node):
            report("exclusive-gateway-default", ERROR, node,
                   f"{_describe(node)} has no default flow: if no condition holds, the case stops here with an "
                   "incident; mark the otherwise-branch as default, or, when the conditions cover every case "
                   "on purpose, give the gateway the property 'exhaustive' saying why")


EXHAUSTIVE_PROPERTY = "exhaustive"


def _declared_exhaustive(node) -> bool:
    return any(prop.get("name") == EXHAUSTIVE_PROPERTY and (prop.get("value") or "").strip()
               for prop in node.iterfind(_PROPERTIES, NS))


def conditional_flows(scope: Scope, report: Report) -> None:
    """Every outgoing flow of a choice has a condition, except the default flow, which has none.

    A choice is a splitting exclusive or inclusive gateway, or any element with a default flow or
    a conditional outgoing flow (a conditional split drawn on an activity). A flow without a
    condition there is either always taken or, on an exclusive gateway, refused by the engine; a
    condition on the default flow is never evaluated.
    """
    for node_id, node in scope.nodes.items():
        flows = scope.outgoing[node_id]
        choice = ((_local(node) in CONDITIONAL_GATEWAYS and len(flows) > 1)
                  or (bool(node.get("default")) and len(flows) > 1)
                  or any(_has_condition(f) for f in flows))
        if not choice:
            continue
        for flow in flows:
            if _is_default(node, flow) and _has_condition(flow):
                report("conditional-flows", ERROR, flow,
                       f"default flow {flow.get('id')} of {_describe(node)} has a condition, which is never "
                       "evaluated: remove it")
            elif not _is_default(node, flow) and not _has_condition(flow):
                report("conditional-flows", ERROR, flow,
                       f"flow {flow.get('id')} leaves {_describe(node)} without a condition: give it one, or "
                       "make it the default flow")


def no_unreachable_end(scope: Scope, report: Report) -> None:
    """Every end event can be reached from a start, and no loop that can be reached traps its token.

    A token starts at the scope's start events (without any: at the nodes nothing flows into) and
    moves along sequence flows, and from an activity out through its boundary events. An end event
    no token reaches is dead drawing, and usually a flow drawn to the wrong element. A trap is a
    loop of reachable elements that no flow leaves, so no end can follow (each of its elements is
    reported); an element with no outgoing flow at all is `no-disconnected`'s. A scope without any
    end event is reported once, on the scope.
    """
    if scope.ad_hoc:
        return
    ends = [i for i, n in scope.nodes.items() if _local(n) == "endEvent"]
    reached = _reach(scope.entry_points(), scope.successors)
    for end_id in ends:
        if end_id not in reached:
            report("no-unreachable-end", ERROR, scope.nodes[end_id],
                   f"{_describe(scope.nodes[end_id])} cannot be reached from any start event")
    if not ends:
        if scope.nodes:
            report("no-unreachable-end", ERROR, scope.element,
                   f"{_describe(scope.element)} has no end event, so no path through it ends")
        return
    doomed = reached - _reach(ends, scope.predecessors)
    for loop in _closed_loops(scope, doomed):
        names = ", ".join(sorted(loop))
        for node_id in sorted(loop, key=lambda i: scope.nodes[i].sourceline or 0):
            report("no-unreachable-end", ERROR, scope.nodes[node_id],
                   f"{_describe(scope.nodes[node_id])} is in a loop that no flow leaves ({names}): no end event "
                   "can follow it")


def _closed_loops(scope: Scope, doomed: set[str]) -> list[set[str]]:
    """The loops among `doomed` (a set closed under successors) with no way out: strongly connected
    components that have no successor outside themselves and more than one element or a flow to
    themselves. Kosaraju's algorithm, iterative so that a long diagram cannot exhaust the stack."""
    def succ(node_id):
        return [n for n in scope.successors(node_id) if n in doomed]

    order, visited = [], set()
    for root in doomed:
        if root in visited:
            continue
        visited.add(root)
        stack = [(root, iter(succ(root)))]
        while stack:
            node_id, pending = stack[-1]
            nxt = next((n for n in pending if n not in visited), None)
            if nxt is None:
                stack.pop()
                order.append(node_id)
            else:
                visited.add(nxt)
                stack.append((nxt, iter(succ(nxt))))
    component: dict[str, int] = {}
    groups: list[set[str]] = []
    for root in reversed(order):
        if root in component:
            continue
        members = _reach([root], lambda n: [p for p in scope.predecessors(n) if p in doomed and p not in component])
        members = {m for m in members if m not in component}
        for member in members:
            component[member] = len(groups)
        groups.append(members)
    loops = []
    for index, members in enumerate(groups):
        leaves = any(component[n] != index for m in members for n in succ(m))
        cyclic = len(members) > 1 or any(m in succ(m) for m in members)
        if cyclic and not leaves:
            loops.append(members)
    return loops


RULES: dict[str, Callable[[Scope, Report], None]] = {
    "no-implicit-split": no_implicit_split,
    "no-implicit-join": no_implicit_join,
    "no-disconnected": no_disconnected,
    "label-required": label_required,
    "exclusive-gateway-default": exclusive_gateway_default,
    "conditional-flows": conditional_flows,
    "no-unreachable-end": no_unreachable_end,
}


def lint(tree, file: str = "") -> list[Finding]:
    """Every rule on every scope of a parsed BPMN document, findings in document order."""
    findings: list[Finding] = []

    def report(rule: str, severity: str, element, message: str) -> None:
        findings.append(Finding(rule, severity, message, element.get("id"), element.sourceline, file))

    for scope in scopes(tree):
        for check in RULES.values():
            check(scope, report)
    return sorted(findings, key=lambda f: (f.line or 0, f.rule))


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == ERROR]
