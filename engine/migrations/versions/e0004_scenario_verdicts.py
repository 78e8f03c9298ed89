"""scenario verdicts

The scenario tests run before a deploy, and the reason given when a deploy overrides failing ones.

Revision ID: e0004
Revises: e0003

"""
import sqlalchemy as sa
from alembic import op

revision = 'e0004'
down_revision = 'e0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'scenario_verdict',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('process_key', sa.String(length=100), nullable=False),
        sa.Column('content_hash', sa.String(length=64), nullable=False),
        sa.Column('passed', sa.Integer(), nullable=False),
        sa.Column('failed', sa.Integer(), nullable=False),
        sa.Column('failures', sa.JSON(), nullable=False),
        sa.Column('override_reason', sa.Text(), nullable=True),
        sa.Column('decided_by', sa.String(length=100), nullable=True),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_scenario_verdict')),
    )
    op.create_index('ix_scenario_verdict_key_hash', 'scenario_verdict', ['process_key', 'content_hash'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_scenario_verdict_key_hash', table_name='scenario_verdict')
    op.drop_table('scenario_verdict')
