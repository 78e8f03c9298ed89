"""The script sandbox: normal scripts work, escapes and resource bombs fail fast."""
from __future__ import annotations

import sys
import time
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from engine import sandbox as sb
from engine.sandbox import (
    SandboxedEnvironment,
    SandboxedScriptEngine,
    SandboxError,
    ScriptRejected,
    check_expression,
    check_script,
)

NOW = datetime(2024, 5, 31, 10, 30, tzinfo=UTC)
BOUND = 5.0  # seconds any refused script may take, at most


@pytest.fixture
def env():
    return SandboxedEnvironment(clock=lambda: NOW, time_limit=1.0)


def run(env, script, **data):
    env.execute(script, data)
    return data


# ---------------------------------------------------------------- normal use

def test_arithmetic_dicts_lists(env):
    ctx = run(env, "total = price * qty + 2 ** 10\n"
                   "d = {'a': 1, 'b': [1, 2, 3]}\n"
                   "d['c'] = len(d['b'])\n"
                   "lst = sorted([3, 1, 2])\n"
                   "lst.append(4)\n"
                   "x, y = divmod(17, 5)\n"
                   "m = max(lst) - min(lst) + sum(lst) + abs(-3) + round(2.567, 2)\n"
                   "s = ' '.join(str(i) for i in lst).upper()\n"
                   "flag = isinstance(s, str) and isinstance(3, int) and not isinstance(3, str)\n"
                   "big = 2 ** 4000\n"
                   "n = 10\nn += 5\nn *= 2\nn -= 1\n",
              price=3, qty=4)
    assert ctx['total'] == 3 * 4 + 1024
    assert ctx['d'] == {'a': 1, 'b': [1, 2, 3], 'c': 3}
    assert ctx['lst'] == [1, 2, 3, 4]
    assert (ctx['x'], ctx['y']) == (3, 2)
    assert ctx['m'] == 3 + 10 + 3 + 2.57
    assert ctx['s'] == '1 2 3 4'
    assert ctx['flag'] is True
    assert ctx['big'] == 2 ** 4000
    assert ctx['n'] == 29


def test_comprehensions_functions_and_loops(env):
    ctx = run(env, "squares = [i * i for i in range(5)]\n"
                   "evens = {i for i in squares if i % 2 == 0}\n"
                   "index = {name: i for i, name in enumerate(names)}\n"
                   "pairs = list(zip(names, squares))\n"
                   "def fact(n):\n    return 1 if n <= 1 else n * fact(n - 1)\n"
                   "f10 = fact(10)\n"
                   "by_len = sorted(names, key=lambda s: (len(s), s))\n"
                   "first = next((n for n in names if n.startswith('b')), None)\n"
                   "count = 0\n"
                   "while count < 100:\n    count += 1\n"
                   "try:\n    oops = {}['missing']\nexcept KeyError:\n    oops = 'caught'\n"
                   "evens = sorted(evens)\n"
                   "merged = [*squares, *evens]\n"
                   "t = (*names,)\n"
                   "mx = max(*squares)\n"
                   "counts = {'a': 1}\ncounts['a'] += 1\nsquares[0] += 100\n",
              names=['carla', 'bo', 'anna'])
    assert ctx['squares'] == [100, 1, 4, 9, 16]
    assert ctx['evens'] == [0, 4, 16]
    assert ctx['index'] == {'carla': 0, 'bo': 1, 'anna': 2}
    assert ctx['pairs'] == [('carla', 0), ('bo', 1), ('anna', 4)]
    assert ctx['f10'] == 3628800
    assert ctx['by_len'] == ['bo', 'anna', 'carla']
    assert ctx['first'] == 'bo'
    assert ctx['count'] == 100
    assert ctx['oops'] == 'caught'
    assert ctx['merged'] == [0, 1, 4, 9, 16, 0, 4, 16]
    assert ctx['t'] == ('carla', 'bo', 'anna')
    assert ctx['mx'] == 16
    assert ctx['counts'] == {'a': 2}
    assert 'fact' not in ctx  # functions are not task data


def test_helpers_and_dates(env):
    ctx = run(env, "t = today()\n"
                   "n = now()\n"
                   "due = t + timedelta(days=10)\n"
                   "born = parse_date('2010-06-15')\n"
                   "age = age_in_years(born)\n"
                   "age_then = age_in_years('2010-06-15', date(2020, 6, 15))\n"
                   "end_feb = add_months(date(2024, 1, 31), 1)\n"
                   "back = add_months('2024-03-31', -13)\n"
                   "gap = days_between('2024-01-01', date(2024, 3, 1))\n"
                   "p = iso_duration(days=20)\n"
                   "p2 = iso_duration(months=1, days=2, hours=3)\n"
                   "p0 = iso_duration()\n"
                   "iso = due.isoformat()\n"
                   "y = t.year\n"
                   "wd = t.strftime('%A')\n"
                   "same = parse_date('2024-05-31T08:00:00+02:00') == t\n")
    assert ctx['t'] == date(2024, 5, 31)
    assert ctx['n'] == NOW
    assert ctx['due'] == date(2024, 6, 10)
    assert ctx['age'] == 13 and ctx['age_then'] == 10
    assert ctx['end_feb'] == date(2024, 2, 29)
    assert ctx['back'] == date(2023, 2, 28)
    assert ctx['gap'] == 60
    assert (ctx['p'], ctx['p2'], ctx['p0']) == ('P20D', 'P1M2DT3H', 'P0D')
    assert ctx['iso'] == '2024-06-10' and ctx['y'] == 2024 and ctx['wd'] == 'Friday'
    assert ctx['same'] is True
    for helper in ('today', 'now', 'date', 'timedelta', 'parse_date', 'age_in_years'):
        assert helper not in ctx


def test_clock_is_injected_and_normalised_to_utc():
    local = timezone(timedelta(hours=2))
    env = SandboxedEnvironment(clock=lambda: datetime(2024, 1, 1, 1, 0, tzinfo=local))
    assert env.evaluate('now()', {}) == datetime(2023, 12, 31, 23, 0, tzinfo=UTC)
    assert env.evaluate('today()', {}) == date(2023, 12, 31)
    # A date's own clock methods are refused: time comes from the injected clock.
    with pytest.raises(SandboxError):
        env.evaluate('today().today()', {})


def test_helpers_reject_bad_input_with_catchable_errors(env):
    ctx = run(env, "try:\n    d = parse_date('not a date')\nexcept ValueError:\n    d = None\n")
    assert ctx['d'] is None
    with pytest.raises(SandboxError, match='ISO 8601'):
        env.execute("d = parse_date('31/05/2024')", {})
    with pytest.raises(SandboxError):
        env.execute("p = iso_duration(days=-1)", {})


def test_fstrings_and_percent_formatting(env):
    ctx = run(env, "a = f'{name}: {amount:>8.2f} {amount!r} {items}'\n"
                   "b = '%s has %d items' % (name, len(items))\n"
                   "c = f'{today():%Y-%m-%d}'\n"
                   "w = 6\nd = f'{name:>{w}}'\n"
                   "e = f'{name=}'\n",
              name='Anna', amount=3.14159, items=[1, 2])
    assert ctx['a'] == "Anna:     3.14 3.14159 [1, 2]"
    assert ctx['b'] == 'Anna has 2 items'
    assert ctx['c'] == '2024-05-31'
    assert ctx['d'] == '  Anna'
    assert ctx['e'] == "name='Anna'"


def test_print_is_collected_not_leaked(env):
    ctx = run(env, "print('hello', 42)\nx = 1\n")
    assert ctx == {'x': 1}


def test_evaluate_expressions(env):
    data = {'gravetat': 'lleu', 'age': 15, 'tags': ['a', 'b'], 'perill': True}
    assert env.evaluate("gravetat in ('lleu', 'moderat')", data) is True
    assert env.evaluate("perill == True", data) is True
    assert env.evaluate("age >= 18", data) is False
    assert env.evaluate("[t.upper() for t in tags]", data) == ['A', 'B']
    assert env.evaluate("dmninputexpr >= 11", data, {'dmninputexpr': 12}) is True
    assert env.evaluate("x", {'x': 1}, {'x': 2}) == 1  # task data wins over external context
    assert env.evaluate("iso_duration(days=3)", data) == 'P3D'
    assert data == {'gravetat': 'lleu', 'age': 15, 'tags': ['a', 'b'], 'perill': True}


def test_expressions_cannot_change_task_data(env):
    data = {'tags': ['a'], 'd': {'k': 1}}
    for expression in ("tags.append('x')", "d.update({'k': 2})", "d.pop('k')", "tags.sort()"):
        with pytest.raises(SandboxError):
            env.evaluate(expression, data)
    assert data == {'tags': ['a'], 'd': {'k': 1}}


def test_execute_semantics(env):
    data = {'keep': 1, 'drop': 2, 'change': [1], 'not-an-identifier': 'x', '_private': 'y'}
    env.execute("del drop\nchange.append(2)\nnew = keep + 1\n"
                "def helper():\n    return 1\nalias = len\n_ = 5\n", data)
    assert data == {'keep': 1, 'change': [1, 2], 'new': 2,
                    'not-an-identifier': 'x', '_private': 'y'}
    # external context is visible but not written back
    data = {}
    env.execute("seen = ext + 1\next = 99", data, {'ext': 1})
    assert data == {'seen': 2}


def test_task_data_shadows_helpers(env):
    # A form field called 'date' must keep working as data.
    assert env.evaluate("date == '2024-01-01'", {'date': '2024-01-01'}) is True
    ctx = run(env, "date = 'x'")
    assert ctx == {'date': 'x'}


def test_compiled_code_is_cached(env):
    sb._compile_cached.cache_clear()
    for _ in range(5):
        env.evaluate('a + 1', {'a': 1})
    info = sb._compile_cached.cache_info()
    assert info.misses == 1 and info.hits == 4


# ------------------------------------------------------------- escapes / bombs

COMPILE_TIME = [
    "__import__('os')",
    "().__class__.__base__",
    "getattr((), '__class__')",
    "'{0.__class__}'.format(1)",
    "x = 1\nf'{x.__class__}'",
    "(lambda: 0).__globals__",
    "g = (i for i in [1])\ng.gi_frame",
    "g = (i for i in [1])\ng.gi_code",
    "eval('1')",
    "exec('1')",
    "import os",
    "from os import path",
    "globals()",
    "vars()",
    "dir()",
    "compile('1', 'f', 'exec')",
    "open('/etc/passwd')",
    "type(1)",
    "class A:\n    pass",
    "try:\n    x = 1\nexcept:\n    pass",
    "try:\n    x = 1\nfinally:\n    pass",
    "def e():\n    return ValueError\ntry:\n    x = 1\nexcept e():\n    pass",
    "with x:\n    pass",
    "'{}'.format_map({})",
    "x = __builtins__",
    "x = 1\nx.__class__.__subclasses__()",
]


@pytest.mark.parametrize('source', COMPILE_TIME)
def test_refused_at_compile_time(env, source):
    started = time.monotonic()
    with pytest.raises(ScriptRejected) as info:
        check_script(source)
    assert info.value.lineno is not None
    assert isinstance(info.value.detail, str) and info.value.detail
    with pytest.raises(SandboxError):
        env.execute(source, {'x': 1})
    assert time.monotonic() - started < BOUND


RUNTIME = [
    "10**10**10",
    "'a'*10**9",
    "[0]*10**9",
    "1<<10**8",
    "while True: pass",
    "while True:\n    pass",
    "x = 0\nwhile x >= 0:\n    x += 1",
    "for i in range(10**9): pass",
    "def f(n): return f(n+1)\nf(0)",
    "def f(n):\n    return f(n + 1)\nf(0)",
    "f = lambda n: f(n + 1)\nf(0)",
    "pow(10, 10**10)",
    "x = 10\nx **= 10**10",
    "x = 'ab'\nx *= 10**9",
    "x = [1]\nx += x * 10**8",
    "x = 1\nx <<= 10**8",
    "'abc'.ljust(10**9)",
    "'abc'.center(10**9)",
    "'0'.zfill(10**9)",
    "s = 'a' * 100000\ns.replace('a', s)",
    "s = 'a' * 100000\ns.join([s, s, s])",
    "(1).to_bytes(10**9, 'big')",
    "x = list(range(100000))\nwhile True:\n    x.extend(x)",
    "x = list(range(100000))\nwhile True:\n    x[:0] = x",
    "x = list(range(50000))\nwhile True:\n    x = [*x, *x]",
    "g = lambda *a: a\nx = tuple(range(50000))\nwhile True:\n    x = g(*x, *x)",
    "x = [1] * 50000\nwhile True:\n    x = sum([x, x], [])",
    "x = [0] * 100000\ny = [x for i in range(1000)]\ns = str(y)",
    "x = [0] * 100000\ny = [x for i in range(1000)]\ns = repr(y)",
    "x = [0] * 100000\ny = [x for i in range(1000)]\ns = f'{y}'",
    "x = [0] * 100000\ny = [x for i in range(1000)]\ns = '%s' % (y,)",
    "s = 'a' * 60000\nt = f'{s}{s}'",
    "f'{1:>1000000000}'",
    "'%1000000000d' % 1",
    "'%*d' % (10**9, 1)",
    "round(10, -10**9)",
    "int('9' * 100000)",
    "range(10**12)",
    "sum(range(10**15))",
    "setattr(x, 'a', 1)",
    "x = {}\nx.__setitem__",
    "g = (i for i in [1])\nh = g\nh.send",
    "k = len\nk.abc",
    "e = ValueError('x')\ne.args",
    "str.upper('x')",
    "x = today()\nx.now()",
    "hash((1,))",
    "id(1)",
    "x = iter",
    "x = BaseException",
    "raise SystemExit",
]


@pytest.mark.parametrize('source', RUNTIME)
def test_refused_at_run_time(env, source):
    started = time.monotonic()
    with pytest.raises(SandboxError):
        env.execute(source, {'x': 1})
    assert time.monotonic() - started < BOUND


def test_format_attribute_is_refused_by_the_guard_too():
    # Compile time already refuses '.format'; the run-time guard does as well.
    with pytest.raises(SandboxError):
        sb._guarded_getattr('{0.__class__}', 'format')
    with pytest.raises(SandboxError):
        sb._guarded_getattr('{0.__class__}', 'format_map')
    with pytest.raises(SandboxError):
        sb._guarded_getattr(lambda: 0, 'func_globals')
    with pytest.raises(SandboxError):
        sb._guarded_getattr(str, 'join')
    assert sb._guarded_getattr('abc', 'upper')() == 'ABC'


def test_fstrings_cannot_reach_attributes():
    for source in ("f'{x.__class__}'", "f'{x!r:{x.__class__}}'", "f'{getattr(x, \"y\")}'"):
        with pytest.raises(ScriptRejected):
            check_script(source)
    env = SandboxedEnvironment()
    # Format specs are passed to format(), which never looks attributes up.
    with pytest.raises(SandboxError):
        env.evaluate("f'{x:{y}}'", {'x': 1, 'y': '{0.__class__}'})


def test_time_limit_cannot_be_caught(env):
    script = ("while True:\n"
              "    try:\n"
              "        while True:\n"
              "            pass\n"
              "    except Exception:\n"
              "        pass\n")
    started = time.monotonic()
    with pytest.raises(SandboxError, match='time limit'):
        env.execute(script, {})
    assert time.monotonic() - started < BOUND


def test_time_limit_applies_to_expressions():
    env = SandboxedEnvironment(time_limit=0.2)
    started = time.monotonic()
    with pytest.raises(SandboxError, match='time limit'):
        env.evaluate("[i for i in range(100000) for j in range(100000)]", {})
    assert time.monotonic() - started < BOUND


def test_recursion_limit_error(env):
    with pytest.raises(SandboxError, match='nested too deeply'):
        env.execute("def f(n):\n    return f(n + 1)\nf(0)", {})
    # moderate recursion is fine
    ctx = run(env, "def f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nr = f(40)")
    assert ctx['r'] == 40


def test_time_limit_restores_previous_trace_function(env):
    calls = []

    def previous(frame, event, arg):
        calls.append(event)
        return None

    original = sys.gettrace()
    sys.settrace(previous)
    try:
        with pytest.raises(SandboxError, match='time limit'):
            env.execute("while True: pass", {})
        assert sys.gettrace() is previous
        env.execute("x = 1", {})
        assert sys.gettrace() is previous
        with pytest.raises(SandboxError):
            env.execute("def f(n): return f(n+1)\nf(0)", {})
        assert sys.gettrace() is previous
        with pytest.raises(SandboxError):
            env.evaluate("1/0", {})
        assert sys.gettrace() is previous
    finally:
        sys.settrace(original)


def test_failed_script_leaves_task_data_unchanged(env):
    data = {'items': [1, 2, 3], 'd': {'k': 1}, 'y': 0}
    snapshot = {'items': [1, 2, 3], 'd': {'k': 1}, 'y': 0}
    items, inner = data['items'], data['d']
    for script in ("items.append(4)\nd['x'] = 2\ny = 1\nnew = 5\n1/0",
                   "items.append(4)\nwhile True: pass",
                   "items.append(4)\ndel y\nbig = 'a' * 90000\nbig2 = [big, big, big]"):
        with pytest.raises(SandboxError):
            env.execute(script, data)
        assert data == snapshot
        assert data['items'] is items and data['d'] is inner


def test_memory_growth_limit():
    env = SandboxedEnvironment(time_limit=5.0)
    env.memory_limit = 64 * 2**20
    started = time.monotonic()
    with pytest.raises(SandboxError, match='memory limit'):
        env.execute("x = [list(range(100000)) for i in range(100000)]", {})
    assert time.monotonic() - started < BOUND


def test_huge_exception_arguments_are_not_turned_into_text(env):
    started = time.monotonic()
    with pytest.raises(SandboxError) as info:
        env.execute("x = [0] * 100000\ny = [x for i in range(1000)]\nraise ValueError(y)", {})
    assert str(info.value) == 'ValueError (line 3)'
    assert time.monotonic() - started < BOUND


def test_task_data_size_limit(env):
    with pytest.raises(SandboxError, match='too large'):
        env.execute("x = 'a' * 90000\ny = [x, x, x]", {})
    with pytest.raises(SandboxError, match='too large'):
        env.execute("x = [0] * 100000\ny = [x for i in range(100)]", {})
    run(env, "x = 'a' * 60000\ny = [x, x]")  # about 180 KiB: fine


def test_unstorable_values_are_refused(env):
    with pytest.raises(SandboxError, match='set'):
        env.execute("s = {1, 2}", {})
    with pytest.raises(SandboxError, match='generator'):
        env.execute("g = (i for i in [1])", {})
    with pytest.raises(SandboxError, match='nested too deeply'):
        env.execute("x = []\nfor i in range(200):\n    x = [x]", {})
    with pytest.raises(SandboxError):
        env.evaluate("(i for i in [1])", {})
    with pytest.raises(SandboxError):
        env.evaluate("lambda: 1", {})


def test_error_messages_do_not_contain_task_data(env):
    secret = 'TOPSECRET-4711'
    scripts = ["n = int(secret)", "d = {}\nv = d[secret]", "raise ValueError(secret)",
               "assert secret == 'x', secret", "v = parse_date(secret)",
               "v = secret + 1", "v = [1][int(len(secret) * 10)]", "v = float(secret)",
               "v = {'a': 1}[secret[0:3]]"]
    for script in scripts:
        with pytest.raises(SandboxError) as info:
            env.execute(script, {'secret': secret})
        assert secret not in str(info.value)
        assert 'TOP' not in str(info.value)
        assert info.value.lineno is not None


def test_error_messages_are_useful(env):
    with pytest.raises(SandboxError) as info:
        env.execute("x = 1\ny = 2\nz = missing + 1", {})
    assert info.value.lineno == 3 and "'missing'" in str(info.value)
    assert isinstance(info.value, NameError)
    with pytest.raises(SandboxError) as info:
        env.execute("raise ValueError('amount must be positive')", {})
    assert 'amount must be positive' in str(info.value)
    with pytest.raises(SandboxError) as info:
        env.execute("d = {'a': 1}\nv = d['b']", {})
    assert "'b'" in str(info.value) and info.value.lineno == 2
    with pytest.raises(ScriptRejected) as info:
        check_script("x = 1\ny = (\n")
    assert info.value.lineno is not None and 'syntax' in info.value.detail
    with pytest.raises(ScriptRejected) as info:
        check_script("x = 1\nimport os")
    assert info.value.lineno == 2 and 'import' in info.value.detail
    assert isinstance(info.value, SyntaxError)


def test_check_expression_and_script():
    check_expression("a + 1 > 2 and b in ('x', 'y')")
    check_script("a = 1\nif a:\n    b = [i for i in range(3)]\n")
    with pytest.raises(ScriptRejected):
        check_expression("a = 1")
    with pytest.raises(ScriptRejected):
        check_expression("> 5")
    with pytest.raises(ScriptRejected):
        check_script(None)
    with pytest.raises(ScriptRejected):
        check_script('x = 1\n' * 20000)


def test_call_service(env):
    with pytest.raises(SandboxError):
        env.call_service({}, operation_name='x', operation_params={})
    calls = []

    def handler(name, params, context):
        calls.append((name, params, dict(context)))
        return '{"ok": true}'

    env = SandboxedEnvironment(service_handler=handler)
    result = env.call_service({'a': 1}, operation_name='notify',
                              operation_params={'recipient': {'value': 'RUMI', 'type': 'str'}})
    assert result == '{"ok": true}'
    assert calls == [('notify', {'recipient': 'RUMI'}, {'a': 1})]


# ------------------------------------------------------- SpiffWorkflow wiring

BPMN = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core"
    id="Defs" targetNamespace="http://bpmn.io/schema/bpmn">
  <bpmn:process id="proc" isExecutable="true">
    <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:scriptTask id="calc" name="Calc">
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
      <bpmn:script>puntuacio = int(a) + int(b)
due = (today() + timedelta(days=3)).isoformat()</bpmn:script>
    </bpmn:scriptTask>
    <bpmn:exclusiveGateway id="gw"><bpmn:incoming>f2</bpmn:incoming>
      <bpmn:outgoing>high</bpmn:outgoing><bpmn:outgoing>low</bpmn:outgoing></bpmn:exclusiveGateway>
    <bpmn:sequenceFlow id="high" sourceRef="gw" targetRef="notify">
      <bpmn:conditionExpression>puntuacio &gt;= 5</bpmn:conditionExpression></bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="low" sourceRef="gw" targetRef="decide">
      <bpmn:conditionExpression>puntuacio &lt; 5</bpmn:conditionExpression></bpmn:sequenceFlow>
    <bpmn:serviceTask id="notify" name="Notify">
      <bpmn:extensionElements>
        <spiffworkflow:serviceTaskOperator id="record_communication" resultVariable="sent">
          <spiffworkflow:parameters>
            <spiffworkflow:parameter id="recipient" type="str" value="'RUMI'" />
            <spiffworkflow:parameter id="score" type="int" value="puntuacio * 2" />
          </spiffworkflow:parameters>
        </spiffworkflow:serviceTaskOperator>
      </bpmn:extensionElements>
      <bpmn:incoming>high</bpmn:incoming><bpmn:outgoing>f3</bpmn:outgoing>
    </bpmn:serviceTask>
    <bpmn:businessRuleTask id="decide" name="Decide">
      <bpmn:extensionElements>
        <spiffworkflow:calledDecisionId>level</spiffworkflow:calledDecisionId>
      </bpmn:extensionElements>
      <bpmn:incoming>low</bpmn:incoming><bpmn:incoming>f3</bpmn:incoming>
      <bpmn:outgoing>f4</bpmn:outgoing>
    </bpmn:businessRuleTask>
    <bpmn:intermediateCatchEvent id="wait">
      <bpmn:incoming>f4</bpmn:incoming><bpmn:outgoing>f5</bpmn:outgoing>
      <bpmn:timerEventDefinition id="timer">
        <bpmn:timeDuration>iso_duration(days=2)</bpmn:timeDuration>
      </bpmn:timerEventDefinition>
    </bpmn:intermediateCatchEvent>
    <bpmn:endEvent id="end"><bpmn:incoming>f5</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="calc"/>
    <bpmn:sequenceFlow id="f2" sourceRef="calc" targetRef="gw"/>
    <bpmn:sequenceFlow id="f3" sourceRef="notify" targetRef="decide"/>
    <bpmn:sequenceFlow id="f4" sourceRef="decide" targetRef="wait"/>
    <bpmn:sequenceFlow id="f5" sourceRef="wait" targetRef="end"/>
  </bpmn:process>
</bpmn:definitions>
"""

DMN = """<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="https://www.omg.org/spec/DMN/20191111/MODEL/" id="d" name="d"
    namespace="http://camins.local/dmn/test">
  <decision id="level" name="Level">
    <decisionTable id="t" hitPolicy="FIRST">
      <input id="i1" label="Score"><inputExpression id="e1" typeRef="integer">
        <text>puntuacio</text></inputExpression></input>
      <output id="o1" label="Level" name="level" typeRef="string" />
      <rule id="r1"><inputEntry id="r1i"><text>&gt;= 5</text></inputEntry>
        <outputEntry id="r1o"><text>'high'</text></outputEntry></rule>
      <rule id="r2"><inputEntry id="r2i"><text>3</text></inputEntry>
        <outputEntry id="r2o"><text>'three'</text></outputEntry></rule>
      <rule id="r3"><inputEntry id="r3i"><text>1 &lt; ? &lt; 3</text></inputEntry>
        <outputEntry id="r3o"><text>'two'</text></outputEntry></rule>
      <rule id="r4"><inputEntry id="r4i"><text>-</text></inputEntry>
        <outputEntry id="r4o"><text>'other-' + str(puntuacio)</text></outputEntry></rule>
    </decisionTable>
  </decision>
</definitions>
"""


def _workflow(engine, **data):
    from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
    from SpiffWorkflow.spiff.parser.process import SpiffBpmnParser

    parser = SpiffBpmnParser()
    parser.add_bpmn_str(BPMN.encode())
    parser.add_dmn_str(DMN.encode())
    workflow = BpmnWorkflow(parser.get_spec('proc'), script_engine=engine)
    workflow.get_tasks(spec_name='start')[0].data.update(data)
    return workflow


@pytest.mark.parametrize('a, b, level, service_called', [
    (3, 4, 'high', True),
    (1, 2, 'three', False),
    (1, 1, 'two', False),
    (0, 0, 'other-0', False),
])
def test_spiffworkflow_integration(a, b, level, service_called):
    from SpiffWorkflow.util.task import TaskState

    calls = []

    def handler(name, params, context):
        calls.append((name, params))
        return '{"status": "ok"}'

    engine = SandboxedScriptEngine(clock=lambda: NOW, service_handler=handler)
    workflow = _workflow(engine, a=a, b=b)
    workflow.do_engine_steps()
    wait = workflow.get_tasks(spec_name='wait')[0]
    assert wait.state == TaskState.WAITING
    assert wait.internal_data.get('event_value')  # timer expression evaluated in the sandbox
    data = wait.data
    assert data['puntuacio'] == a + b
    assert data['due'] == '2024-06-03'
    assert data['level'] == level
    if service_called:
        assert calls == [('record_communication', {'recipient': 'RUMI', 'score': 2 * (a + b)})]
        assert data['sent'] == {'status': 'ok'}
    else:
        assert calls == []


def test_spiffworkflow_reports_sandbox_errors():
    from SpiffWorkflow.bpmn.exceptions import WorkflowTaskException

    engine = SandboxedScriptEngine(clock=lambda: NOW)
    workflow = _workflow(engine, a='x', b=1)
    with pytest.raises(WorkflowTaskException) as info:
        workflow.do_engine_steps()
    assert info.value.line_number == 1
    assert "'x'" not in str(info.value)

    engine = SandboxedScriptEngine(clock=lambda: NOW)  # no service handler
    workflow = _workflow(engine, a=3, b=4)
    with pytest.raises(WorkflowTaskException, match='service'):
        workflow.do_engine_steps()


def test_engine_validate_uses_the_sandbox_checks():
    engine = SandboxedScriptEngine()
    engine.validate("x = 1")
    with pytest.raises(ScriptRejected):
        engine.validate("__import__('os')")
    with pytest.raises(SyntaxError):  # the DMN engine probes cells by catching SyntaxError
        engine.validate("> 5")
