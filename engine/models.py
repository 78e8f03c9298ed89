"""Engine tables: definitions, instances and the projections derived from them.

Projections (human_task, timer, message_subscription, incident, history) are
written in the same transaction as the instance state, so no query ever needs
to deserialize a workflow.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .db import Base, UTCDateTime

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Definition(Base):
    __tablename__ = "definition"
    __table_args__ = (
        UniqueConstraint("process_key", "version", name="uq_definition_key_version"),
        Index("ix_definition_key_hash", "process_key", "content_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    process_key: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="active")
    deployed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deployed_by: Mapped[str | None] = mapped_column(String(100))
    # A retired version starts no new instance (engine/versions.py): who retired it, when and why.
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    retired_by: Mapped[str | None] = mapped_column(String(100))
    retire_reason: Mapped[str | None] = mapped_column(Text)
    # Message names that start this process: lets message routing skip parsing.
    message_starts: Mapped[list] = mapped_column(JSON, default=list)
    files: Mapped[list[DefinitionFile]] = relationship(
        back_populates="definition", cascade="all, delete-orphan", order_by="DefinitionFile.name"
    )


class DefinitionFile(Base):
    __tablename__ = "definition_file"
    __table_args__ = (UniqueConstraint("definition_id", "name", name="uq_definition_file_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    definition_id: Mapped[int] = mapped_column(ForeignKey("definition.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(10))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    definition: Mapped[Definition] = relationship(back_populates="files")


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    definition_id: Mapped[int] = mapped_column(ForeignKey("definition.id"), index=True)
    process_key: Mapped[str] = mapped_column(String(100), index=True)
    business_key: Mapped[str] = mapped_column(String(100), index=True)
    status: Mapped[str] = mapped_column(String(20), default="running", index=True)
    state: Mapped[str] = mapped_column(Text)
    serializer_version: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_by: Mapped[str | None] = mapped_column(String(100))
    parent_instance_id: Mapped[int | None] = mapped_column(ForeignKey("instance.id"))
    # Element ids, kept in step with the state so that no read deserializes it.
    active_elements: Mapped[list] = mapped_column(JSON, default=list)
    completed_elements: Mapped[list] = mapped_column(JSON, default=list)
    # Sequence flow ids this instance has crossed (bounded by the diagram's size).
    taken_flows: Mapped[list] = mapped_column(JSON, default=list)
    definition: Mapped[Definition] = relationship()


class HumanTask(Base):
    __tablename__ = "human_task"
    __table_args__ = (
        # An inbox page in display order, and its count from the index alone (migration e0003; on
        # PostgreSQL it also creates statistics st_human_task_state_assignee on (state, assignee)).
        Index("ix_human_task_inbox", "state", "role", "org_unit", text("(due_at IS NULL)"), "due_at", "created_at",
              "id", "assignee"),
        Index("ix_human_task_assignee", "state", "assignee"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # SpiffWorkflow task id
    instance_id: Mapped[int] = mapped_column(ForeignKey("instance.id"), index=True)
    process_key: Mapped[str] = mapped_column(String(100))
    business_key: Mapped[str] = mapped_column(String(100), index=True)
    element_id: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(300))
    lane: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str | None] = mapped_column(String(100))
    org_unit: Mapped[str | None] = mapped_column(String(100))
    assignee: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(20), default="open")
    form: Mapped[str | None] = mapped_column(String(300))
    distinct_from_user: Mapped[str | None] = mapped_column(String(100))
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_by: Mapped[str | None] = mapped_column(String(100))
    properties: Mapped[dict] = mapped_column(JSON, default=dict)


class Timer(Base):
    __tablename__ = "timer"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # SpiffWorkflow task id
    instance_id: Mapped[int] = mapped_column(ForeignKey("instance.id"), index=True)
    element_id: Mapped[str] = mapped_column(String(200))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    status: Mapped[str] = mapped_column(String(20), default="waiting")
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class MessageSubscription(Base):
    __tablename__ = "message_subscription"
    __table_args__ = (Index("ix_message_subscription_route", "name", "business_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # SpiffWorkflow task id
    instance_id: Mapped[int] = mapped_column(ForeignKey("instance.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    business_key: Mapped[str] = mapped_column(String(100))
    element_id: Mapped[str] = mapped_column(String(200))


class Incident(Base):
    __tablename__ = "incident"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instance.id"), index=True)
    element_id: Mapped[str | None] = mapped_column(String(200))
    error_type: Mapped[str] = mapped_column(String(100))
    message: Mapped[str] = mapped_column(Text)
    # The action that failed (kind + arguments), so a retry replays it and the
    # user's submission is not lost.
    action: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="open", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_by: Mapped[str | None] = mapped_column(String(100))


class HistoryEvent(Base):
    """Append-only record of everything that happened to an instance."""

    __tablename__ = "history"
    __table_args__ = (Index("ix_history_business_key_at", "business_key", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instance.id"), index=True)
    business_key: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str | None] = mapped_column(String(100))
    event: Mapped[str] = mapped_column(String(50))
    element_id: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class Outbox(Base):
    """Messages thrown by an instance, delivered after the throwing step commits.

    Delivery is a step of its own on the receiving instance, so a failure there
    becomes that instance's incident instead of undoing the sender's step.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source_instance_id: Mapped[int | None] = mapped_column(ForeignKey("instance.id"))
    name: Mapped[str] = mapped_column(String(200))
    business_key: Mapped[str] = mapped_column(String(100), index=True)
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    target_instance_id: Mapped[int | None] = mapped_column(Integer)


class ScenarioVerdict(Base):
    """The scenario tests run before a deploy (engine/scenario_run.py): how many passed and failed, and
    when a deploy went ahead despite failures, who decided it and why.

    Written before the definition it is about, in a transaction of its own: a definition whose
    scenarios failed is never stored without the reason it was deployed anyway.
    """

    __tablename__ = "scenario_verdict"
    __table_args__ = (Index("ix_scenario_verdict_key_hash", "process_key", "content_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    process_key: Mapped[str] = mapped_column(String(100))
    content_hash: Mapped[str] = mapped_column(String(64))
    passed: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    failures: Mapped[list] = mapped_column(JSON, default=list)  # one line each, the first few
    override_reason: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(String(100))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime())
