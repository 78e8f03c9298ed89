"""Users, passwords, tokens and the principal: who is asking and what they may see.

Need-to-know: a case is visible to a user holding a membership whose territory
covers the case and who either supervises that territory, is a referent of the
case, or holds a role that has (or had) a task on the case.
"""
from __future__ import annotations

import hashlib
import math
import os
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, delete, select, text

from engine import clock
from engine.errors import NotFound, Rejected

from .models import ApiToken, Case, LoginAttempt, Membership, User
from .orgunits import IMAS_CODE, UNITS, find_unit
from .roles import COMARCA, IMAS, MUNICIPALITY, ROLES, SECTION, SYSTEM

_hasher = PasswordHasher()
TOKEN_LIFETIME = timedelta(hours=8)
# Verifying against a dummy hash keeps the response time the same for unknown users.
_DUMMY_HASH = _hasher.hash("camins-dummy-password")


@dataclass(frozen=True)
class Grant:
    role: str
    unit: str


@dataclass
class Principal:
    username: str
    grants: list[Grant] = field(default_factory=list)

    def has_role(self, *roles: str) -> bool:
        return any(g.role in roles for g in self.grants)

    @property
    def only_notifier(self) -> bool:
        return bool(self.grants) and all(g.role == "notifier" for g in self.grants)

    def queues(self) -> set[tuple[str, str]]:
        return {(g.role, g.unit) for g in self.grants}

    def covers(self, grant: Grant, case: Case) -> bool:
        level = ROLES[grant.role].level
        if level == MUNICIPALITY:
            return grant.unit == case.municipality
        if level == COMARCA:
            return grant.unit == case.comarca
        if level == SECTION:
            return grant.unit == case.section
        if level in (IMAS, SYSTEM):
            return grant.unit == IMAS_CODE
        return False

    def supervises(self, case: Case) -> bool:
        return any(ROLES[g.role].supervisor and self.covers(g, case) for g in self.grants)


def scope_unit(role: str, case: Case) -> str | None:
    """The org unit whose members of `role` are candidates for a task on `case`."""
    level = ROLES[role].level if role in ROLES else None
    return {
        MUNICIPALITY: case.municipality,
        COMARCA: case.comarca,
        SECTION: case.section,
        IMAS: IMAS_CODE,
    }.get(level)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def create_user(session, username: str, password: str, grants: list[tuple[str, str]], full_name: str = "") -> User:
    """Create a user with memberships given as (role code, unit name or code)."""
    if not username or len(username) > 100:
        raise Rejected("username must be 1 to 100 characters")
    if len(password) < 8:
        raise Rejected("password must have at least 8 characters")
    if session.scalar(select(User).where(User.username == username)):
        raise Rejected(f"user '{username}' already exists")
    user = User(username=username, full_name=full_name, password_hash=hash_password(password), active=True,
                created_at=clock.now())
    for role, unit_name in grants:
        user.memberships.append(membership_for(role, unit_name))
    session.add(user)
    session.flush()
    return user


def membership_for(role: str, unit_name: str) -> Membership:
    if role not in ROLES:
        raise Rejected(f"unknown role '{role}'; known roles: {', '.join(sorted(ROLES))}")
    unit = find_unit(unit_name)
    if unit is None:
        raise Rejected(f"unknown org unit '{unit_name}'")
    expected = {MUNICIPALITY: "municipality", COMARCA: "comarca", SECTION: "section", IMAS: "imas",
                SYSTEM: "imas"}.get(ROLES[role].level)
    if expected and unit.kind != expected:
        raise Rejected(f"role '{role}' belongs to a {expected}, but '{unit.name}' is a {unit.kind}")
    return Membership(role=role, org_unit=unit.code)


def authenticate(session, username: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.username == username))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return user if user is not None and user.active else None


@dataclass(frozen=True)
class LoginLimits:
    """How many failed logins a username, and a client address, may have in `window`.

    The address limit is higher: people behind one office router share an address. A
    successful login clears its username's failures but not its address's, or one valid
    account would let a guesser reset the address limit between guesses at other accounts.
    """

    per_user: int = 5
    per_address: int = 30
    window: timedelta = timedelta(minutes=15)

    @classmethod
    def from_env(cls) -> LoginLimits:
        return cls(per_user=int(os.environ.get("CAMINS_LOGIN_MAX_FAILURES_PER_USER", cls.per_user)),
                   per_address=int(os.environ.get("CAMINS_LOGIN_MAX_FAILURES_PER_ADDRESS", cls.per_address)),
                   window=timedelta(seconds=int(os.environ.get("CAMINS_LOGIN_WINDOW_SECONDS",
                                                               cls.window.total_seconds()))))


@dataclass(frozen=True)
class AttemptKey:
    key_hash: str
    limit: int


def attempt_keys(limits: LoginLimits, username: str, address: str | None) -> list[AttemptKey]:
    """What a login attempt counts against: the username as typed (whether or not such a user
    exists, so the answers tell nothing about that) and the client address, if known."""
    keys = [AttemptKey(_digest("user:" + username), limits.per_user)]
    if address:
        keys.append(AttemptKey(_digest("address:" + address), limits.per_address))
    return keys


def admit_attempt(session, limits: LoginLimits, keys: list[AttemptKey]) -> tuple[list[int], int | None]:
    """Record a login attempt before its password is checked, unless a key is over its limit.

    Returns the ids of the rows recorded and None, or no ids and the seconds to wait. Attempts
    are admitted one at a time (BEGIN IMMEDIATE on SQLite, a table lock on PostgreSQL, held for
    this short transaction only), and each counts the attempts admitted before it, the ones
    still being checked included: however many guesses arrive at once, no more than the limit
    get their password checked. Attempts older than the window are dropped on the way.
    """
    _lock_attempts(session)
    now = clock.now()
    session.execute(delete(LoginAttempt).where(LoginAttempt.at <= now - limits.window))
    wait = None
    for key in keys:
        earlier = sorted(session.scalars(select(LoginAttempt.at).where(LoginAttempt.key_hash == key.key_hash)))
        if len(earlier) < key.limit:
            continue
        # Admitted again once all but limit - 1 of them have left the window.
        free_at = earlier[len(earlier) - key.limit] + limits.window
        wait = max(wait or 0, max(1, math.ceil((free_at - now).total_seconds())))
    if wait is not None:
        return [], wait
    rows = [LoginAttempt(key_hash=k.key_hash, at=now) for k in keys]
    session.add_all(rows)
    session.flush()
    return [r.id for r in rows], None


def _lock_attempts(session) -> None:
    """Every write to login_attempt takes this lock first (PostgreSQL; SQLite writes one at a time anyway).

    Two successful logins of one user at the same moment each delete their own rows and then the
    user's other rows, which include the other login's: without one lock first they deadlock.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE login_attempt IN SHARE ROW EXCLUSIVE MODE"))


def forget_attempts(session, ids: list[int]) -> None:
    _lock_attempts(session)
    session.execute(delete(LoginAttempt).where(LoginAttempt.id.in_(ids)))


def clear_user_failures(session, username: str) -> None:
    _lock_attempts(session)
    session.execute(delete(LoginAttempt).where(LoginAttempt.key_hash == _digest("user:" + username)))


def issue_token(session, user: User) -> tuple[str, ApiToken]:
    token = secrets.token_urlsafe(32)
    now = clock.now()
    row = ApiToken(token_hash=_digest(token), user_id=user.id, created_at=now, expires_at=now + TOKEN_LIFETIME)
    session.add(row)
    session.flush()
    return token, row


# Every request is authenticated: token, user and memberships in one query, built once.
_TOKEN_GRANTS = (
    select(ApiToken.__table__.c.revoked, ApiToken.__table__.c.expires_at, User.__table__.c.username,
           User.__table__.c.active, Membership.__table__.c.role, Membership.__table__.c.org_unit)
    .select_from(ApiToken.__table__.join(User.__table__, User.__table__.c.id == ApiToken.__table__.c.user_id)
                 .outerjoin(Membership.__table__, Membership.__table__.c.user_id == User.__table__.c.id))
    .where(ApiToken.__table__.c.token_hash == bindparam("token_hash"))
    .order_by(Membership.__table__.c.id)
)


def principal_for_token(session, token: str) -> Principal:
    rows = session.connection().execute(_TOKEN_GRANTS, {"token_hash": _digest(token)}).all()
    if not rows:
        raise NotFound("invalid or expired token")
    first = rows[0]
    if first.revoked or first.expires_at <= clock.now() or not first.active:
        raise NotFound("invalid or expired token")
    return Principal(first.username, [Grant(r.role, r.org_unit) for r in rows if r.role is not None])


def principal_for_user(user: User) -> Principal:
    return Principal(user.username, [Grant(m.role, m.org_unit) for m in user.memberships])


def revoke_token(session, token: str) -> None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _digest(token)))
    if row is not None:
        row.revoked = True


def candidates(session, role: str, unit: str) -> list[str]:
    return list(session.scalars(
        select(User.username).join(Membership).where(Membership.role == role, Membership.org_unit == unit,
                                                     User.active.is_(True)).order_by(User.username)))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def unit_name(code: str | None) -> str | None:
    unit = UNITS.get(code or "")
    return unit.name if unit else code
