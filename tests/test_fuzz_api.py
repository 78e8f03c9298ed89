"""API fuzzing: schemathesis generates requests from the live /api/openapi.json and sends them to a real server.

For every operation, as a coordinator (coord.manacor), an analyst (analista) and the administrative who works
the case's first task (adm.manacor), the fuzzer sends schema-valid requests (positive; some aimed at a real
case, task and instance so that they get past the 404s) and schema-violating ones (negative). Every response
must:
- never be a 5xx;
- have a status code the operation documents (there is no catch-all 'default' answer);
- have the documented content type and a body that matches the documented schema (errors: problem+json);
- reject invalid input with a 4xx (negative_data_rejection);
- refuse the request without its bearer token (ignored_auth).
positive_data_acceptance is not checked: the service rightly refuses some schema-valid input with a 422
for rules a schema cannot say (a municipality that is not one of the 53, a form's fields). Unknown query
parameters are ignored by design (PageArgs), so they are not counted as invalid input; unknown body fields are.
The fuzzer sends the bearer token itself rather than generating the Authorization header: ignored_auth
covers requests without it or with a wrong one.

Bounded and reproducible: derandomized Hypothesis, a fixed number of examples per operation.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import load_all_checks
from schemathesis.core.failures import FailureGroup

from workflows.demo import DEMO_PASSWORD

EXAMPLES = 12  # per operation and generation mode (CI time: 15 minutes for everything)
CONFIG = {
    "request-timeout": 30,
    "generation": {"with-security-parameters": False},
    "checks": {"positive_data_acceptance": {"enabled": False}},
    "operations": [{"include-method": "GET",
                    "generation": {"with-security-parameters": False, "allow-extra-parameters": False}}],
}
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         phases=[Phase.explicit, Phase.generate, Phase.shrink],
                         suppress_health_check=list(HealthCheck))
# A supervisor and an analyst see the most; the administrative of Manacor works the case's first task.
USERS = ("coord.manacor", "analista", "adm.manacor")
# Operations that each user must have been answered with a success at least once: the run went past the
# 401s and 404s into the service. The analyst works on instances and definitions but does not need to
# know cases, so cases and tasks stay 404 for them (need-to-know).
REACHED = {
    "coord.manacor": {"GET /api/tasks", "GET /api/tasks/{task_id}", "GET /api/cases/{reference}",
                      "GET /api/cases/{reference}/clocks", "GET /api/instances/{instance_id}", "GET /api/clocks",
                      "GET /api/definitions", "GET /api/supervision/processes/{process_key}/overview",
                      "GET /api/supervision/processes/{process_key}/instances", "GET /api/supervision/workload"},
    "analista": {"GET /api/instances/{instance_id}", "GET /api/definitions",
                 "GET /api/supervision/processes/{process_key}/overview"},
    "adm.manacor": {"GET /api/tasks", "GET /api/tasks/{task_id}", "POST /api/tasks/{task_id}/claim",
                    "POST /api/tasks/{task_id}/unclaim", "GET /api/cases/{reference}"},
}
NEVER_SUCCEEDS = {
    "analista": {"GET /api/cases/{reference}", "GET /api/cases/{reference}/clocks", "GET /api/tasks/{task_id}",
                 "GET /api/supervision/processes/{process_key}/instances", "GET /api/supervision/workload"},
    "coord.manacor": set(),
    "adm.manacor": {"GET /api/clocks", "POST /api/definitions", "POST /api/tasks/{task_id}/reassign",
                    "GET /api/supervision/processes/{process_key}/overview",
                    "GET /api/supervision/processes/{process_key}/instances", "GET /api/supervision/workload"},
}

# Body fields of positive requests that are sometimes set to the seeded case (and its pathway).
AIMED_BODIES = {"POST /api/instances": {"case_reference", "process_key"}, "POST /api/messages": {"case_reference"},
                "POST /api/notifications": {"municipality"}}


def _login(base: str, username: str) -> str:
    response = requests.post(f"{base}/api/auth/token", json={"username": username, "password": DEMO_PASSWORD},
                             timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def _seed(base: str) -> dict:
    """A Manacor case with its detection pathway waiting on a task: real ids for the fuzzer to aim at."""
    token = _login(base, "coord.manacor")
    auth = {"Authorization": f"Bearer {token}"}
    notified = requests.post(f"{base}/api/notifications", headers=auth, timeout=60, json={
        "municipality": "Manacor", "description": "Absentisme i signes de descuit.",
        "child": {"given_name": "Nen", "family_name": "Prova", "birth_date": date(2016, 5, 4).isoformat()},
        "reporter": {"kind": "school"}})
    assert notified.status_code == 201, notified.text
    case = notified.json()
    view = requests.get(f"{base}/api/cases/{case['case_reference']}", headers=auth, timeout=60)
    assert view.status_code == 200 and view.json()["open_tasks"], view.text
    task = view.json()["open_tasks"][0]
    return {"reference": case["case_reference"], "case_reference": case["case_reference"],
            "instance_id": case["instance_id"], "task_id": task["id"], "process_key": task["process_key"],
            "municipality": "Manacor"}


def _aimed(operation, seeded: dict):
    """Positive requests, half of them aimed at the seeded case, task and instance."""
    plain = operation.as_strategy(GenerationMode.POSITIVE)
    names = [p.name for p in operation.path_parameters]
    strategies = [plain]
    if names and all(n in seeded for n in names):
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE,
                                                path_parameters={n: seeded[n] for n in names}))

    def at_real_case(case):
        case.body = {**case.body, **{k: v for k, v in seeded.items() if k in AIMED_BODIES[operation.label]}}
        return case

    if operation.label in AIMED_BODIES:
        strategies.append(plain.map(at_real_case))
    return st.one_of(strategies)


def _fuzz(strategy, call) -> str | None:
    @given(case=strategy)
    @FUZZ_SETTINGS
    def run(case):
        call(case)

    try:
        run()
    except FailureGroup as failure:
        return str(failure)
    return None


@pytest.mark.parametrize("username", USERS)
def test_every_operation_keeps_its_documented_contract_under_fuzzing(server, username):
    load_all_checks()
    schema = schemathesis.openapi.from_url(f"{server}/api/openapi.json", config=schemathesis.Config.from_dict(CONFIG))
    schema.config.update(base_url=server)
    seeded = _seed(server)
    token = _login(server, username)
    statuses: dict[str, Counter] = defaultdict(Counter)
    failures: dict[str, str] = {}
    unnegatable: list[str] = []

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 19, [op.label for op in operations]
    for operation in operations:
        if operation.definition.raw.get("security") == [] and username != USERS[0]:
            continue  # a public operation (logging in) answers everyone alike: fuzzed once
        def call(case, operation=operation):
            # Logging out revokes the token it is sent with: that operation gets a token of its own.
            bearer = _login(server, username) if operation.path == "/api/auth/logout" else token
            response = case.call(headers={"Authorization": f"Bearer {bearer}"})
            statuses[operation.label][response.status_code] += 1
            case.validate_response(response, headers={"Authorization": f"Bearer {bearer}"})

        failure = _fuzz(_aimed(operation, seeded), call)
        if failure:
            failures[f"{operation.label} (positive)"] = failure
        try:
            failure = _fuzz(operation.as_strategy(GenerationMode.NEGATIVE), call)
        except Unsatisfiable:
            # Nothing to send invalid: no body, no query, and path ids that any string satisfies (the
            # positive run already sends junk ones).
            assert not operation.definition.raw.get("requestBody"), operation.label
            assert all(p.location.value != "query" for p in operation.iter_parameters()), operation.label
            unnegatable.append(operation.label)
            continue
        if failure:
            failures[f"{operation.label} (negative)"] = failure

    report = "\n".join(f"{label}: {dict(sorted(counts.items()))}" for label, counts in sorted(statuses.items()))
    print(f"statuses seen as {username}:\n{report}\nno invalid request possible: {unnegatable}")
    assert not failures, "\n\n".join(f"== {label}\n{text}" for label, text in failures.items())
    assert not [label for label, counts in statuses.items() if any(code >= 500 for code in counts)]
    not_reached = {label for label in REACHED[username] if not any(200 <= c < 300 for c in statuses[label])}
    assert not not_reached, f"the fuzzer never got past the errors of {sorted(not_reached)}:\n{report}"
    leaked = {label for label in NEVER_SUCCEEDS[username] if any(200 <= c < 300 for c in statuses[label])}
    assert not leaked, f"{username} was answered with data it does not need to know: {sorted(leaked)}"


def test_every_operation_documents_its_errors_as_they_leave(http):
    """What the fuzzer checks against: errors documented as problem+json, 401 wherever a token is needed,
    no catch-all 'default' answer (it would make every status code 'documented')."""
    spec = http.get("/api/openapi.json").json()
    components = spec["components"]["responses"]
    assert set(spec["components"]["schemas"]["Problem"]["required"]) == {"type", "title", "status"}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            assert "default" not in responses, (method, path)
            assert any(code.startswith("2") for code in responses), (method, path)
            if operation.get("security") != []:
                assert "401" in responses, (method, path)
            for code, response in responses.items():
                if int(code) < 400:
                    continue
                response = components[response["$ref"].rsplit("/", 1)[1]] if "$ref" in response else response
                assert response["content"] == {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}}, (method, path, code)


def test_an_undocumented_method_is_a_405_that_names_the_documented_ones(http):
    response = http.call("PUT", "/api/tasks", "coord.manacor")
    assert response.status_code == 405
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert "GET" in response.headers["Allow"] and "PUT" not in response.headers["Allow"]


# What the fuzzer found on PostgreSQL: a NUL character in a case reference reached the query and the
# database refused it (500). No database driver can encode an unpaired surrogate either (a 500 on SQLite
# too). Each of these is refused where it comes in, naming the field, on both databases. "{case}" is a
# real case, so that the request would otherwise get as far as the database.
UNSTORABLE = [
    ("GET", "/api/cases/EXP-2026-%00", None, 404, None),
    ("GET", "/api/cases/{case}%00/clocks", None, 404, None),
    ("GET", "/api/tasks?case=EXP%00", None, 422, "case"),
    ("GET", "/api/tasks?pathway=%00", None, 422, "pathway"),
    ("POST", "/api/instances", {"process_key": "deteccio", "case_reference": "EXP-2026-\x00", "data": {}}, 422,
     "case_reference"),
    ("POST", "/api/instances", {"process_key": "deteccio", "case_reference": "{case}", "data": {"nota\x00": 1}},
     422, "data.'nota\\x00'"),
    ("POST", "/api/messages", {"name": "acusament\x00", "case_reference": "{case}"}, 422, "name"),
    ("POST", "/api/messages", {"name": "sentencia\ud800", "case_reference": "{case}"}, 422, "name"),
    ("POST", "/api/messages", {"name": "sentencia_judicial", "case_reference": "{case}",
                               "payload": {"nota": ["a\x00b"]}}, 422, "payload.nota.0"),
    ("POST", "/api/notifications", {"municipality": "Manacor", "description": "\ud83d",
                                    "child": {"given_name": "A", "family_name": "B", "birth_date": "2016-01-01"},
                                    "reporter": {"kind": "school"}}, 422, "description"),
]


def _notify(http) -> str:
    response = http.post("/api/notifications", "coord.manacor", json={
        "municipality": "Manacor", "description": "Absentisme.", "reporter": {"kind": "school"},
        "child": {"given_name": "A", "family_name": "B", "birth_date": "2016-01-01"}})
    assert response.status_code == 201, response.text
    return response.json()["case_reference"]


def _with_case(value, reference: str):
    if isinstance(value, str):
        return value.replace("{case}", reference)
    if isinstance(value, dict):
        return {k: _with_case(v, reference) for k, v in value.items()}
    return value


@pytest.mark.parametrize("method, path, body, status, field", UNSTORABLE)
def test_text_no_database_can_store_is_refused_where_it_comes_in(http, method, path, body, status, field):
    reference = _notify(http)
    response = http.call(method, _with_case(path, reference), "coord.manacor", json=_with_case(body, reference))
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    if field:
        assert field in response.json()["errors"], response.json()


def test_unstorable_text_in_form_data_and_logins_is_refused(http):
    task_id = http.get(f"/api/cases/{_notify(http)}", "coord.manacor").json()["open_tasks"][0]["id"]
    completed = http.post(f"/api/tasks/{task_id}/complete", "adm.manacor", json={"data": {"canal": ["\x00"]}})
    assert completed.status_code == 422 and "data.canal.0" in completed.json()["errors"], completed.text
    assert http.get(f"/api/tasks/{task_id}", "adm.manacor").json()["state"] == "open"
    login = requests.post(f"{http.base}/api/auth/token", json={"username": "adm.manacor\x00", "password": "x"},
                          timeout=30)
    assert login.status_code == 422 and "username" in login.json()["errors"], login.text
