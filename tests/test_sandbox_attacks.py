"""Sandbox escapes and resource attacks, run by a real server as script tasks and gateway conditions.

Each attack goes into a diagram that an analyst deploys over HTTP to `camins serve` (gunicorn, a
separate process), then starts on a case. An attack passes when it is refused at deploy with a 422
naming the element, or when starting the instance opens an incident on that element and changes
nothing else. It fails if the script's effect reaches the task data, if any answer is a 5xx, if an
attack takes unbounded time, or if the server process dies, is restarted by gunicorn, grows
without bound or stops answering other requests meanwhile.

Unit-level cases of the same sandbox are in test_sandbox.py.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
import requests

from workflows.pathways import BUNDLED_DIAGRAMS
from workflows.service import Camins

from .conftest import Http, _empty_tables
from .pathway_driver import notify
from .processes import group_pids, start_server

# Starts servers or workers as subprocesses: under pytest-xdist, on one worker with the others that do.
pytestmark = pytest.mark.xdist_group("processes")

# A hang detector, not a performance target: the sandbox's own limit is 1 s of script time.
HANG_SECONDS = 30.0
# The sandbox tolerates 512 MiB of growth per evaluation; the server must stay well under this.
PEAK_MEMORY_BOUND = 2 * 2**30


@dataclass(frozen=True)
class Attack:
    name: str
    source: str


# Statements, run as the body of a script task.
SCRIPT_ATTACKS = [
    Attack("subclasses via a tuple", "x = ().__class__.__bases__[0].__subclasses__()"),
    Attack("subclasses via the MRO", "x = [].__class__.__mro__[-1].__subclasses__()"),
    Attack("object's subclasses", "x = object.__subclasses__()"),
    Attack("function globals", "def f():\n    return 1\nx = f.__globals__['__builtins__']"),
    Attack("lambda globals", "x = (lambda: 0).__globals__"),
    Attack("function code object", "def f():\n    return 1\nx = f.__code__.co_consts"),
    Attack("builtins name", "x = __builtins__['eval']('1')"),
    Attack("builtin's module", "x = len.__self__"),
    Attack("str.format attribute", "x = '{0.__class__.__mro__}'.format(1)"),
    Attack("str.format_map attribute", "x = '{a.__class__}'.format_map({'a': 1})"),
    Attack("format through a name", "fmt = '{0.__globals__}'\nx = fmt.format(len)"),
    Attack("f-string attribute", "x = f'{(1).__class__}'"),
    Attack("f-string nested spec", "spec = '{0.__class__}'\nx = f'{1:{spec}}'"),
    Attack("generator frame", "g = (i for i in [1])\nx = g.gi_frame.f_back.f_globals"),
    Attack("generator function frame", "def f():\n    yield 1\ng = f()\nnext(g)\nx = g.gi_frame.f_back"),
    Attack("generator code", "g = (i for i in [1])\nx = g.gi_code"),
    Attack("coroutine frame", "async def c():\n    return 1\nx = c().cr_frame"),
    Attack("exception traceback", "try:\n    1 / 0\nexcept Exception as e:\n    x = e.__traceback__.tb_frame"),
    Attack("decorator reaching globals", "def d(f):\n    return f.__globals__\n@d\ndef g():\n    return 1"),
    Attack("lambda default argument", "x = (lambda f=len: f.__self__)()"),
    Attack("type() with three arguments", "x = type('A', (), {})"),
    Attack("type() of a value", "x = type(1).__subclasses__()"),
    Attack("class statement", "class A:\n    pass\nx = A"),
    Attack("getattr with a built name", "x = getattr(1, '_' + '_class__')"),
    Attack("fullwidth underscores (NFKC)", "x = ().\uff3f\uff3fclass\uff3f\uff3f"),
    Attack("import statement", "import os\nx = os.getcwd()"),
    Attack("from-import", "from subprocess import run\nx = run"),
    Attack("__import__", "x = __import__('os').system('true')"),
    Attack("eval", "x = eval('1 + 1')"),
    Attack("exec", "exec('x = 1')"),
    Attack("compile", "x = compile('1', 'f', 'eval')"),
    Attack("open a file", "x = open('/etc/passwd').read()"),
    Attack("globals()", "x = globals()"),
    Attack("vars() of a helper", "x = vars(today)"),
    Attack("helper result's class", "x = today().__class__"),
    Attack("raise SystemExit", "raise SystemExit(0)"),
    Attack("huge power", "x = 10 ** 10 ** 10"),
    Attack("huge power, augmented", "x = 10\nx **= 10 ** 10"),
    Attack("string repetition", "x = 'a' * 10 ** 9"),
    Attack("list repetition", "x = [0] * 10 ** 9"),
    Attack("left shift", "x = 1 << 10 ** 9"),
    Attack("string padding", "x = 'abc'.ljust(10 ** 10)"),
    Attack("integer to bytes", "x = (1).to_bytes(10 ** 9, 'big')"),
    Attack("infinite loop", "while True:\n    pass"),
    Attack("counting loop", "x = 0\nwhile x >= 0:\n    x += 1"),
    Attack("huge range loop", "for i in range(10 ** 12):\n    pass"),
    Attack("deep recursion", "def f(n):\n    return f(n + 1)\nx = f(0)"),
    Attack("recursive lambda", "f = lambda n: f(n + 1)\nx = f(0)"),
    Attack("large allocation", "x = [list(range(100000)) for i in range(100000)]"),
    Attack("doubling list", "x = list(range(100000))\nwhile True:\n    x.extend(x)"),
    Attack("huge dictionary", "x = {i: i for i in range(10 ** 9)}"),
    Attack("task data bomb", "x = 'a' * 90000\ny = [x, x, x, x]"),
    Attack("huge repr", "x = [0] * 100000\ny = [x for i in range(1000)]\nz = str(y)"),
    Attack("huge integer parse", "x = int('9' * 100000)"),
]

# Expressions, used as the condition of a gateway's outgoing flow.
CONDITION_ATTACKS = [
    Attack("subclasses via a tuple", "len(().__class__.__bases__[0].__subclasses__()) > 0"),
    Attack("lambda globals", "(lambda: 0).__globals__ is not None"),
    Attack("lambda code", "(lambda: 0).__code__.co_consts is not None"),
    Attack("str.format attribute", "'{0.__class__}'.format(1) != ''"),
    Attack("f-string attribute", "f'{(1).__class__}' != ''"),
    Attack("generator frame", "(i for i in [1]).gi_frame.f_back.f_globals is not None"),
    Attack("builtins name", "__builtins__ is not None"),
    Attack("__import__", "__import__('os').system('true') == 0"),
    Attack("eval", "eval('True')"),
    Attack("open a file", "open('/etc/passwd').read() != ''"),
    Attack("type()", "type(1) is int"),
    Attack("getattr with a built name", "getattr(1, '_' + '_class__') is not None"),
    Attack("fullwidth underscores (NFKC)", "().\uff3f\uff3fclass\uff3f\uff3f is not None"),
    Attack("globals()", "'x' in globals()"),
    Attack("task data attribute", "x.__class__ is not None"),
    Attack("subclasses in a comprehension", "[c for c in (1).__class__.__subclasses__()] != []"),
    Attack("condition changing task data", "items.append(2) is None"),
    Attack("huge power", "10 ** 10 ** 10 > 0"),
    Attack("string repetition", "len('a' * 10 ** 9) > 0"),
    Attack("list repetition", "len([0] * 10 ** 9) > 0"),
    Attack("huge sum", "sum(range(10 ** 15)) > 0"),
    Attack("long comprehension", "len([i for i in range(10 ** 9)]) > 0"),
    Attack("self-applied lambda", "(lambda f: f(f))(lambda f: f(f)) is None"),
    Attack("huge integer to text", "len(str(10 ** 100000)) > 0"),
    Attack("large allocation", "len([list(range(100000)) for i in range(100000)]) > 0"),
]

SCRIPT_DIAGRAM = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="defs" targetNamespace="http://camins">
  <bpmn:process id="atac" name="Atac" isExecutable="true">
    <bpmn:laneSet id="lanes"><bpmn:lane id="lane1" name="Treballador/a social">
      <bpmn:flowNodeRef>inici</bpmn:flowNodeRef><bpmn:flowNodeRef>script</bpmn:flowNodeRef>
      <bpmn:flowNodeRef>fi</bpmn:flowNodeRef></bpmn:lane></bpmn:laneSet>
    <bpmn:startEvent id="inici" name="Inici"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:scriptTask id="script" name="Calcular"><bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
      <bpmn:script>{source}</bpmn:script></bpmn:scriptTask>
    <bpmn:endEvent id="fi" name="Fi"><bpmn:incoming>f2</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="inici" targetRef="script" />
    <bpmn:sequenceFlow id="f2" sourceRef="script" targetRef="fi" />
  </bpmn:process>
</bpmn:definitions>
"""

CONDITION_DIAGRAM = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" id="defs" targetNamespace="http://camins">
  <bpmn:process id="atac" name="Atac" isExecutable="true">
    <bpmn:laneSet id="lanes"><bpmn:lane id="lane1" name="Treballador/a social">
      <bpmn:flowNodeRef>inici</bpmn:flowNodeRef><bpmn:flowNodeRef>gateway</bpmn:flowNodeRef>
      <bpmn:flowNodeRef>fi_si</bpmn:flowNodeRef><bpmn:flowNodeRef>fi_no</bpmn:flowNodeRef></bpmn:lane></bpmn:laneSet>
    <bpmn:startEvent id="inici" name="Inici"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:exclusiveGateway id="gateway" name="Decidir?" default="f_no">
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f_si</bpmn:outgoing><bpmn:outgoing>f_no</bpmn:outgoing>
    </bpmn:exclusiveGateway>
    <bpmn:endEvent id="fi_si" name="Sí"><bpmn:incoming>f_si</bpmn:incoming></bpmn:endEvent>
    <bpmn:endEvent id="fi_no" name="No"><bpmn:incoming>f_no</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="inici" targetRef="gateway" />
    <bpmn:sequenceFlow id="f_si" name="Sí" sourceRef="gateway" targetRef="fi_si">
      <bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">{source}</bpmn:conditionExpression>
    </bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="f_no" name="No" sourceRef="gateway" targetRef="fi_no" />
  </bpmn:process>
</bpmn:definitions>
"""

# What each attack ran into, for the summary printed at the end (see the README's security table).
OUTCOMES: dict[str, list[tuple[str, str, float]]] = {}


def _xml_text(source: str) -> str:
    return source.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class HealthProbe(threading.Thread):
    """Asks /healthz all along, so an attack that blocks the server shows as a slow or failed answer."""

    def __init__(self, base: str):
        super().__init__(daemon=True)
        self.base = base
        self.stopped = threading.Event()
        self.slowest = 0.0
        self.failures: list[str] = []
        self.answers = 0

    def run(self):
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                status = requests.get(self.base + "/healthz", timeout=HANG_SECONDS).status_code
                if status != 200:
                    self.failures.append(f"status {status}")
            except requests.RequestException as err:
                self.failures.append(type(err).__name__)
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.answers += 1
            self.stopped.wait(0.05)


@pytest.fixture(scope="module")
def target(database_url, tmp_path_factory):
    directory = tmp_path_factory.mktemp("sandbox_attacks")
    _empty_tables(database_url)
    camins = Camins(database_url)
    camins.deploy_directory(BUNDLED_DIAGRAMS)
    camins.close()
    server = start_server(database_url, directory, workers=1)
    pids = group_pids(server)
    http = Http(server.base)
    probe = HealthProbe(server.base)
    probe.start()
    reference = notify(http)
    OUTCOMES.clear()
    yield server, http, reference
    probe.stopped.set()
    probe.join(timeout=HANG_SECONDS)
    try:
        # The same processes still serve: gunicorn did not quietly replace a worker that died.
        assert server.alive() and group_pids(server) == pids, server.log_tail()
        assert probe.answers > 0 and not probe.failures, probe.failures[:5]
        peak = server.group_peak_rss_bytes()
        assert peak < PEAK_MEMORY_BOUND, f"server peak memory {peak / 2**20:.0f} MiB"
        _print_summary(probe, peak)
    finally:
        server.stop()


def _print_summary(probe: HealthProbe, peak: int) -> None:
    refused, incidents = OUTCOMES.get("refused at deploy", []), OUTCOMES.get("incident", [])
    slowest = max((seconds for _, _, seconds in refused + incidents), default=0.0)
    print(f"\nsandbox attacks: {len(refused)} refused at deploy, {len(incidents)} incidents at run time; "
          f"slowest attack {slowest:.2f} s; /healthz answered {probe.answers} times during the attacks, "
          f"slowest {probe.slowest:.2f} s; server peak memory {peak / 2**20:.0f} MiB")


def _deploy(http: Http, xml: str):
    return http.post("/api/definitions", "analista",
                     files=[("files", ("atac.bpmn", xml.encode(), "application/xml"))])


def _start(http: Http, reference: str, data: dict):
    return http.post("/api/instances", "analista",
                     json={"process_key": "atac", "case_reference": reference, "data": data})


def _run_attack(target, kind: str, attack: Attack, diagram: str, element_ids: set[str]) -> None:
    server, http, reference = target
    started = time.monotonic()
    deployed = _deploy(http, diagram.format(source=_xml_text(attack.source)))
    assert deployed.status_code in (201, 422), deployed.text[:2000]
    if deployed.status_code == 422:
        problems = deployed.json()["problems"]
        assert any(p.get("element_id") in element_ids for p in problems), problems
        outcome = "refused at deploy"
    else:
        started_instance = _start(http, reference, {"x": 1, "items": [1]})
        assert started_instance.status_code == 201, started_instance.text[:2000]
        body = started_instance.json()
        # The step was rolled back: nothing ran, the task data is what was sent.
        assert body["incident_id"] is not None, f"the attack ran: {body}"
        assert [i["element_id"] for i in body["incidents"]] in ([e] for e in element_ids), body["incidents"]
        assert body["completed_elements"] == [] and body["status"] == "created"
        message = body["incidents"][0]["message"]
        assert "Traceback" not in message and 'File "' not in message, message
        outcome = "incident"
    seconds = time.monotonic() - started
    assert seconds < HANG_SECONDS, f"{attack.name} took {seconds:.1f} s"
    assert server.alive(), server.log_tail()
    OUTCOMES.setdefault(outcome, []).append((kind, attack.name, seconds))


@pytest.mark.parametrize("attack", SCRIPT_ATTACKS, ids=lambda a: a.name)
def test_script_task_attack_is_contained(target, attack):
    _run_attack(target, "script", attack, SCRIPT_DIAGRAM, {"script"})


@pytest.mark.parametrize("attack", CONDITION_ATTACKS, ids=lambda a: a.name)
def test_gateway_condition_attack_is_contained(target, attack):
    _run_attack(target, "condition", attack, CONDITION_DIAGRAM, {"gateway", "f_si"})


def test_server_is_not_poisoned_after_the_attacks(target):
    """The helpers and builtins every diagram shares still work after the whole corpus."""
    server, http, reference = target
    script = "items = [3, 1, 2]\nn = len(sorted(items))\nyear = today().year\nlabel = f'{n} casos'"
    assert _deploy(http, SCRIPT_DIAGRAM.format(source=_xml_text(script))).status_code == 201
    body = _start(http, reference, {}).json()
    assert body["incident_id"] is None and body["status"] == "completed", body
    assert len(SCRIPT_ATTACKS) + len(CONDITION_ATTACKS) >= 30
