"""retired versions

Who retired a definition version, when and why (engine/versions.py).

Revision ID: e0005
Revises: e0004

"""
import sqlalchemy as sa
from alembic import op

revision = 'e0005'
down_revision = 'e0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('definition', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('retired_by', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('retire_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('definition', schema=None) as batch_op:
        batch_op.drop_column('retire_reason')
        batch_op.drop_column('retired_by')
        batch_op.drop_column('retired_at')
