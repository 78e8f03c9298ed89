"""Domain tables: users and memberships, cases, the access log, communications."""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import JSON, Boolean, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from engine.db import Base, UTCDateTime
from engine.models import BigId


class User(Base):
    __tablename__ = "app_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    full_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    memberships: Mapped[list[Membership]] = relationship(back_populates="user", cascade="all, delete-orphan",
                                                         lazy="selectin")


class Membership(Base):
    """A user holds a role in an org unit (by unit code, see workflows.orgunits)."""

    __tablename__ = "membership"
    __table_args__ = (
        UniqueConstraint("user_id", "role", "org_unit", name="uq_membership_user_role_unit"),
        Index("ix_membership_role_unit", "role", "org_unit"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(50))
    org_unit: Mapped[str] = mapped_column(String(100))
    user: Mapped[User] = relationship(back_populates="memberships")


class ApiToken(Base):
    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class LoginAttempt(Base):
    """A login attempt, counted against the username and the client address it came from.

    Rows live in the database so that every API process shares the limits. A row is written
    before the password is checked and removed again when the password was right, so what is
    left in the window are failures (workflows.security.LoginLimits).
    Keys are SHA-256 digests: the table never holds the typed username, which is sometimes a
    password typed in the wrong field.
    """

    __tablename__ = "login_attempt"
    __table_args__ = (Index("ix_login_attempt_key_at", "key_hash", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Case(Base):
    __tablename__ = "case_file"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str] = mapped_column(String(30), unique=True)
    municipality: Mapped[str] = mapped_column(String(100), index=True)  # unit code
    comarca: Mapped[str] = mapped_column(String(100), index=True)
    section: Mapped[str] = mapped_column(String(100), index=True)
    child_given_name: Mapped[str] = mapped_column(String(200))
    child_family_name: Mapped[str] = mapped_column(String(200))
    child_birth_date: Mapped[date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(30), default="open")
    legal_status: Mapped[str] = mapped_column(String(30), default="none")
    severity: Mapped[str | None] = mapped_column(String(30))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(100))
    family: Mapped[list[FamilyMember]] = relationship(cascade="all, delete-orphan", lazy="selectin")
    referents: Mapped[list[CaseReferent]] = relationship(cascade="all, delete-orphan", lazy="selectin")


class FamilyMember(Base):
    __tablename__ = "family_member"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("case_file.id", ondelete="CASCADE"), index=True)
    relation: Mapped[str] = mapped_column(String(50))
    given_name: Mapped[str] = mapped_column(String(200))
    family_name: Mapped[str] = mapped_column(String(200), default="")
    birth_date: Mapped[date | None] = mapped_column(Date)


class CaseReferent(Base):
    """The professional of reference for a role on a case (Llei 9/2019 arts. 93.1.u, 145)."""

    __tablename__ = "case_referent"
    __table_args__ = (UniqueConstraint("case_id", "role", name="uq_case_referent_case_role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("case_file.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(50))
    username: Mapped[str] = mapped_column(String(100))
    since: Mapped[datetime] = mapped_column(UTCDateTime())


class Notification(Base):
    """What was reported. The reporter's identity is reserved (art. 95.5)."""

    __tablename__ = "notification"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("case_file.id", ondelete="CASCADE"), index=True)
    reporter_kind: Mapped[str] = mapped_column(String(30))
    reporter: Mapped[dict] = mapped_column(JSON, default=dict)
    description: Mapped[str] = mapped_column(Text)
    submitted_by: Mapped[str | None] = mapped_column(String(100))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Communication(Base):
    """An outgoing communication recorded by a service task: what, to whom, when."""

    __tablename__ = "communication"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_reference: Mapped[str] = mapped_column(String(30), index=True)
    instance_id: Mapped[int | None] = mapped_column(Integer)
    recipient: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(500))
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AccessLog(Base):
    """Who read or changed which case, when. Append-only."""

    __tablename__ = "access_log"
    __table_args__ = (Index("ix_access_log_case_at", "case_reference", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    username: Mapped[str] = mapped_column(String(100), index=True)
    case_reference: Mapped[str | None] = mapped_column(String(30))
    action: Mapped[str] = mapped_column(String(50))
    resource: Mapped[str] = mapped_column(String(200))


class CaseCounter(Base):
    """Next case number per year, for references like EXP-2026-000123."""

    __tablename__ = "case_counter"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last: Mapped[int] = mapped_column(Integer, default=0)


class ClockRun(Base):
    """One running (or finished) legal clock of a case."""

    __tablename__ = "legal_clock"
    __table_args__ = (Index("ix_legal_clock_open_due", "stopped_at", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_reference: Mapped[str] = mapped_column(String(30), index=True)
    instance_id: Mapped[int | None] = mapped_column(Integer)
    clock_id: Mapped[str] = mapped_column(String(50))
    element_id: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    at_risk_at: Mapped[datetime] = mapped_column(UTCDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stopped_by: Mapped[str | None] = mapped_column(String(200))
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
