"""Logging in, as a user and as an attacker would: hashes, failures, the login limits, tokens.

Token expiry after 9 hours and logout revoking a token are in tests/test_task_actions.py.
"""
from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import Counter
from datetime import timedelta

import requests
from argon2 import PasswordHasher
from sqlalchemy import select, text, update
from werkzeug.serving import make_server

from api import create_app
from engine.db import Base
from workflows import security
from workflows.models import ApiToken, User
from workflows.security import LoginLimits
from workflows.service import Camins

LOGIN = "/api/auth/token"
PROBLEM = "application/problem+json"
WINDOW = LoginLimits().window


def attempt(base: str, username: str, password: str) -> requests.Response:
    return requests.post(base + LOGIN, json={"username": username, "password": password}, timeout=60)


def ensure_user(camins, username: str, password: str, grants=(("sscb_coordinator", "Palma"),)) -> None:
    """Users outlive a test (they are made once per database); make this one if it is not there yet."""
    with camins.db.read() as session:
        exists = session.scalar(select(User.id).where(User.username == username))
    if exists is None:
        camins.create_user(username, password, list(grants))


@contextlib.contextmanager
def second_process(database_url: str, limits: LoginLimits | None = None):
    """Another API process on the same database, as a second gunicorn worker would be."""
    other = Camins(database_url)
    if limits is not None:
        other.login_limits = limits
    httpd = make_server("127.0.0.1", 0, create_app(other, {"TESTING": True}), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield other, f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
        other.close()


def _assert_unauthorized(response: requests.Response) -> None:
    assert response.status_code == 401, (response.request.method, response.url, response.status_code, response.text)
    assert response.headers["Content-Type"].startswith(PROBLEM)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "access_token" not in response.text


def _assert_throttled(response: requests.Response) -> int:
    assert response.status_code == 429, response.text
    assert response.headers["Content-Type"].startswith(PROBLEM)
    assert response.json()["status"] == 429 and "access_token" not in response.text
    return int(response.headers["Retry-After"])


# ---------------------------------------------------------------- passwords


def test_passwords_are_stored_as_salted_argon2id_hashes_and_never_in_clear(http, camins):
    password = "Contrasenya-secreta-7391"
    wrong = "Contrasenya-equivocada-5512"
    for username in ("hash.one", "hash.two"):
        ensure_user(camins, username, password)
    assert attempt(http.base, "hash.one", password).status_code == 200
    assert attempt(http.base, "hash.two", wrong).status_code == 401

    with camins.db.read() as session:
        hashes = dict(session.execute(select(User.username, User.password_hash)
                                      .where(User.username.in_(["hash.one", "hash.two"]))).all())
        # Whatever a login writes anywhere (tokens, attempts, logs), neither password is in it.
        dump = "\n".join(str(tuple(row)) for table in Base.metadata.sorted_tables
                         for row in session.execute(text(f'SELECT * FROM "{table.name}"')))
    for stored in hashes.values():
        assert stored.startswith("$argon2id$") and password not in stored
        assert PasswordHasher().verify(stored, password)
    assert hashes["hash.one"] != hashes["hash.two"]  # salted: the same password hashes differently
    assert password not in dump and wrong not in dump


def test_a_wrong_password_and_an_unknown_user_get_the_same_401(http, camins):
    wrong = attempt(http.base, "coord.manacor", "not-the-password")
    unknown = attempt(http.base, "nobody.manacor", "not-the-password")
    _assert_unauthorized(wrong)
    _assert_unauthorized(unknown)
    assert wrong.json() == unknown.json()
    # Nor does the time tell: an unknown user's password is checked against a hash as well.
    def slowest_of_two(username):
        times = []
        for _ in range(2):
            started = time.perf_counter()
            assert attempt(http.base, username, "still-not-it").status_code == 401
            times.append(time.perf_counter() - started)
        return min(times)
    known_time, unknown_time = slowest_of_two("coord.inca"), slowest_of_two("nobody.inca")
    assert unknown_time > 0.3 * known_time, (unknown_time, known_time)


# ---------------------------------------------------------------- the login limits


def test_failed_logins_per_username_are_limited_across_processes_whether_or_not_the_user_exists(
        http, camins, database_url, manual_clock):
    limit = camins.login_limits.per_user
    with second_process(database_url) as (_other, other_base):
        bases = [http.base, other_base]
        answers = {}
        for username in ("coord.manacor", "nobody.at.all"):
            # The failures alternate between the two processes: they count together.
            for n in range(limit):
                _assert_unauthorized(attempt(bases[n % 2], username, f"guess-{n}"))
            # Past the limit not even the right password is checked, in either process.
            blocked = [attempt(base, username, "camins-demo-2026") for base in bases]
            answers[username] = [(_assert_throttled(r), r.json()) for r in blocked]
        # Nothing tells the existing user from the made-up one.
        assert answers["coord.manacor"] == answers["nobody.at.all"]
        assert answers["coord.manacor"][0][0] == WINDOW.total_seconds()  # the clock stood still
        # Other users are not affected.
        assert attempt(other_base, "coord.inca", "camins-demo-2026").status_code == 200

        manual_clock.advance(WINDOW - timedelta(seconds=1))
        assert _assert_throttled(attempt(http.base, "coord.manacor", "camins-demo-2026")) == 1
        manual_clock.advance(timedelta(seconds=1))
        assert attempt(other_base, "coord.manacor", "camins-demo-2026").status_code == 200


def test_a_successful_login_clears_the_usernames_failures(http, camins):
    limit = camins.login_limits.per_user
    for n in range(limit - 1):
        _assert_unauthorized(attempt(http.base, "ts.inca", f"guess-{n}"))
    assert attempt(http.base, "ts.inca", "camins-demo-2026").status_code == 200
    for n in range(limit):  # a full allowance again
        _assert_unauthorized(attempt(http.base, "ts.inca", f"again-{n}"))
    _assert_throttled(attempt(http.base, "ts.inca", "again-last"))


def test_failed_logins_from_one_address_are_limited_across_usernames(http, camins, manual_clock, monkeypatch):
    """Password spraying: one guess at each of many accounts, all from the same address."""
    monkeypatch.setattr(camins, "login_limits", LoginLimits(per_user=5, per_address=4, window=WINDOW))
    for n in range(4):
        _assert_unauthorized(attempt(http.base, f"sprayed{n}.palma", "Primavera2026"))
    assert _assert_throttled(attempt(http.base, "coord.palma", "camins-demo-2026")) == WINDOW.total_seconds()

    manual_clock.advance(WINDOW)
    for n in range(3):
        _assert_unauthorized(attempt(http.base, f"sprayed{n}.palma", "Estiu2026"))
    # The sprayer's own valid account does not reset the address's count...
    assert attempt(http.base, "coord.palma", "camins-demo-2026").status_code == 200
    _assert_unauthorized(attempt(http.base, "sprayed3.palma", "Estiu2026"))
    # ...so the fifth failure from this address in the window is the last one allowed.
    _assert_throttled(attempt(http.base, "sprayed4.palma", "Estiu2026"))


def test_a_forged_forwarded_for_header_does_not_escape_the_address_limit(http, camins, monkeypatch):
    monkeypatch.setattr(camins, "login_limits", LoginLimits(per_user=5, per_address=2, window=WINDOW))
    for n in range(2):
        _assert_unauthorized(attempt(http.base, f"forger{n}.palma", "Tardor2026"))
    forged = requests.post(http.base + LOGIN, json={"username": "forger9.palma", "password": "Tardor2026"},
                           headers={"X-Forwarded-For": "203.0.113.9"}, timeout=60)
    _assert_throttled(forged)


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_address_limit(database_url, camins,
                                                                               monkeypatch):
    monkeypatch.setenv("CAMINS_TRUSTED_PROXIES", "1")
    limits = LoginLimits(per_user=5, per_address=2, window=WINDOW)
    with second_process(database_url, limits) as (_other, proxied):
        def from_client(address, username):
            return requests.post(proxied + LOGIN, json={"username": username, "password": "Hivern2026"},
                                 headers={"X-Forwarded-For": address}, timeout=60)

        for n in range(2):
            _assert_unauthorized(from_client("198.51.100.7", f"guesser{n}.palma"))
        _assert_throttled(from_client("198.51.100.7", "guesser2.palma"))
        # Everyone else behind the same proxy still gets in.
        _assert_unauthorized(from_client("198.51.100.8", "guesser2.palma"))
        ok = requests.post(proxied + LOGIN, json={"username": "coord.palma", "password": "camins-demo-2026"},
                           headers={"X-Forwarded-For": "198.51.100.9"}, timeout=60)
        assert ok.status_code == 200


def test_the_limits_are_configured_by_environment(monkeypatch):
    monkeypatch.setenv("CAMINS_LOGIN_MAX_FAILURES_PER_USER", "3")
    monkeypatch.setenv("CAMINS_LOGIN_MAX_FAILURES_PER_ADDRESS", "12")
    monkeypatch.setenv("CAMINS_LOGIN_WINDOW_SECONDS", "60")
    assert LoginLimits.from_env() == LoginLimits(per_user=3, per_address=12, window=timedelta(seconds=60))
    monkeypatch.delenv("CAMINS_LOGIN_MAX_FAILURES_PER_USER")
    assert LoginLimits.from_env().per_user == LoginLimits().per_user == 5


def test_parallel_guesses_get_no_more_tries_than_the_limit(http, camins):
    limit = camins.login_limits.per_user
    barrier = threading.Barrier(20)
    statuses = []

    def guess(n):
        barrier.wait(timeout=60)
        statuses.append(attempt(http.base, "es.palma", f"parallel-guess-{n}").status_code)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert Counter(statuses) == Counter({401: limit, 429: 20 - limit})


def test_two_successful_logins_of_one_user_interleaved_both_commit(camins):
    """Each successful login deletes its own attempt, then the user's other attempts: the other login's
    included. Interleaved, two such transactions once deadlocked on PostgreSQL (a 500 for one person)."""
    limits, user = camins.login_limits, "es.palma"
    keys = security.attempt_keys(limits, user, None)
    admitted = []
    for _login in range(2):
        with camins.db.write() as session:
            admitted.append(security.admit_attempt(session, limits, keys)[0])
    first_forgot, errors = threading.Event(), []

    def second_login():
        try:
            first_forgot.wait(timeout=60)
            with camins.db.write() as session:
                security.forget_attempts(session, admitted[1])
                security.clear_user_failures(session, user)
        except Exception as err:  # noqa: BLE001 - the test reports whatever went wrong
            errors.append(err)

    other = threading.Thread(target=second_login)
    other.start()
    try:
        with camins.db.write() as session:
            security.forget_attempts(session, admitted[0])
            first_forgot.set()
            time.sleep(0.5)  # the second login reaches its own deletes meanwhile (or waits for us)
            security.clear_user_failures(session, user)
    except Exception as err:  # noqa: BLE001
        errors.append(err)
    other.join(timeout=120)
    assert errors == []
    with camins.db.read() as session:
        assert session.scalar(text("SELECT count(*) FROM login_attempt")) == 0


# ---------------------------------------------------------------- tokens


def test_tokens_are_random_long_and_stored_only_as_digests(http, camins):
    # Five logins of one user at the same instant (the test clock stands still).
    tokens = [attempt(http.base, "tf.palma", "camins-demo-2026").json()["access_token"] for _ in range(5)]
    assert len(set(tokens)) == 5
    assert len({t[:6] for t in tokens}) == 5  # no shared prefix: nothing sequential or time-based
    for token in tokens:
        assert len(token) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", token)  # at least 256 random bits
        assert "palma" not in token.lower()
    with camins.db.read() as session:
        stored = [tuple(map(str, row)) for row in session.execute(select(ApiToken.__table__))]
        digests = session.scalars(select(ApiToken.token_hash)).all()
    assert not [t for t in tokens if any(t in value for row in stored for value in row)]

    def status(bearer):
        return requests.get(http.base + "/api/tasks", headers={"Authorization": f"Bearer {bearer}"},
                            timeout=60).status_code

    assert status(tokens[0]) == 200
    flipped = tokens[0][:-1] + ("A" if tokens[0][-1] != "A" else "B")
    for forged in [flipped, tokens[0][:-1], tokens[0] + "A", tokens[0].upper(), digests[0], "A" * len(tokens[0])]:
        assert status(forged) == 401, forged


def test_a_token_ends_at_its_lifetime_and_logout_ends_only_that_session(http, camins, manual_clock):
    ensure_user(camins, "sessions.palma", "camins-demo-2026")
    first = attempt(http.base, "sessions.palma", "camins-demo-2026").json()["access_token"]

    def status(token, method="GET", path="/api/tasks"):
        return requests.request(method, http.base + path, headers={"Authorization": f"Bearer {token}"},
                                timeout=60).status_code

    manual_clock.advance(security.TOKEN_LIFETIME - timedelta(seconds=1))
    assert status(first) == 200
    manual_clock.advance(timedelta(seconds=1))
    assert status(first) == 401

    laptop = attempt(http.base, "sessions.palma", "camins-demo-2026").json()["access_token"]
    phone = attempt(http.base, "sessions.palma", "camins-demo-2026").json()["access_token"]
    assert status(laptop, "POST", "/api/auth/logout") == 204
    assert status(laptop) == 401 and status(laptop, "POST", "/api/auth/logout") == 401
    assert status(phone) == 200

    # A deactivated account loses its open sessions at once, and cannot log in again.
    try:
        with camins.db.write() as session:
            session.execute(update(User).where(User.username == "sessions.palma").values(active=False))
        assert status(phone) == 401
        _assert_unauthorized(attempt(http.base, "sessions.palma", "camins-demo-2026"))
    finally:
        with camins.db.write() as session:
            session.execute(update(User).where(User.username == "sessions.palma").values(active=True))


# ---------------------------------------------------------------- every route


PUBLIC = {"/api/auth/token", "/api/openapi.json", "/api/docs"}


def _api_requests(camins) -> list[tuple[str, str]]:
    app = create_app(camins, {"TESTING": True})
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/") or rule.rule in PUBLIC or rule.rule.startswith("/api/docs/"):
            continue
        path = re.sub(r"<int:\w+>", "1", rule.rule)
        path = re.sub(r"<(?:\w+:)?\w+>", "x", path)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((method, path))
    return found


def test_every_api_route_but_login_requires_a_bearer_token_before_looking_at_the_input(http, camins):
    routes = _api_requests(camins)
    assert len(routes) >= 18, routes
    # Unknown paths and wrong methods too: an anonymous caller cannot map the API either.
    routes += [("GET", "/api/nothing-here"), ("DELETE", "/api/tasks"), ("GET", "/api/auth/logout")]
    valid = http.login("coord.palma")
    headers = [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer not-a-token"},
               {"Authorization": f"Basic {valid}"}, {"Authorization": f"Token {valid}"},
               {"Authorization": f"Bearer{valid}"}]
    for method, path in routes:
        for header in headers:
            # Input that would fail validation: a 422 here would mean it was parsed before the caller was known.
            response = requests.request(method, http.base + path + "?per_page=0&page=-1", headers=header,
                                        json={"unexpected": True}, timeout=60)
            _assert_unauthorized(response)

    # The documentation says the same: every operation needs bearerAuth, only the login does not.
    spec = requests.get(http.base + "/api/openapi.json", timeout=60).json()
    assert spec["security"] == [{"bearerAuth": []}]
    open_operations = [(method.upper(), path) for path, item in spec["paths"].items() for method, op in item.items()
                       if isinstance(op, dict) and op.get("security") == []]
    assert open_operations == [("POST", "/api/auth/token")]
