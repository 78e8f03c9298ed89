"""inbox index

An inbox lists the open tasks of one queue (role + org unit) that are unassigned or the caller's, in
display order (tasks with a due date first, by due date, then by creation), 50 at a time, with the
total. The old (state, role, org_unit) index found the queue but then every open task of the queue
was fetched from the table to filter, count and sort it: the cost grew with the queue, hence with
the table. This index is in display order (so the first page is the first rows of the queue's
range) and ends with the assignee (so the count is an index-only scan). It starts with the old
index's columns, which it replaces.

On PostgreSQL, extended statistics on (state, assignee): "unassigned" is common among open tasks
and rare among all of them, and without them the planner guesses that a few rows pass
`assignee = ? OR assignee IS NULL` and sorts the whole queue instead of reading the index in order.

Revision ID: e0003
Revises: e0002

"""
import sqlalchemy as sa
from alembic import op

revision = 'e0003'
down_revision = 'e0002'
branch_labels = None
depends_on = None

INBOX_COLUMNS = ['state', 'role', 'org_unit', sa.text('(due_at IS NULL)'), 'due_at', 'created_at', 'id', 'assignee']


def upgrade() -> None:
    op.create_index('ix_human_task_inbox', 'human_task', INBOX_COLUMNS, unique=False)
    op.drop_index('ix_human_task_queue', table_name='human_task')
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('CREATE STATISTICS st_human_task_state_assignee (mcv) ON state, assignee FROM human_task')
        op.execute('ANALYZE human_task')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP STATISTICS IF EXISTS st_human_task_state_assignee')
    op.create_index('ix_human_task_queue', 'human_task', ['state', 'role', 'org_unit'], unique=False)
    op.drop_index('ix_human_task_inbox', table_name='human_task')
