"""Migration e0003: the inbox index, and the inbox queries reading it in display order."""
from __future__ import annotations

from sqlalchemy import event, text

from workflows.demo import principal

INBOX_COLUMNS = ["state", "role", "org_unit", "(due_at IS NULL)", "due_at", "created_at", "id", "assignee"]


def _index_ddl(camins) -> dict[str, str]:
    with camins.db.read() as session:
        if camins.db.is_sqlite:
            rows = session.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                        "AND tbl_name = 'human_task' AND sql IS NOT NULL"))
        else:
            rows = session.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'human_task'"))
        return dict(rows.all())


def test_upgrade_creates_the_inbox_index_in_place_of_the_queue_index(camins):
    ddl = _index_ddl(camins)
    assert "ix_human_task_queue" not in ddl
    columns = ddl["ix_human_task_inbox"].split("(", 1)[1].rsplit(")", 1)[0]
    assert _bare(columns) == _bare(",".join(INBOX_COLUMNS))  # PostgreSQL writes ((due_at IS NULL))
    if not camins.db.is_sqlite:
        with camins.db.read() as session:
            assert session.scalar(text("SELECT stxkeys::text FROM pg_statistic_ext "
                                       "WHERE stxname = 'st_human_task_state_assignee'")) is not None


def _bare(columns: str) -> str:
    return columns.translate(str.maketrans("", "", " ()"))


def test_inbox_count_and_page_read_the_index_without_sorting(camins):
    if not camins.db.is_sqlite:  # PostgreSQL plans by statistics; on an empty table any plan is right
        return
    statements = []

    def capture(_conn, _cursor, statement, parameters, _context, _executemany):
        if statement.lstrip().upper().startswith("SELECT") and "human_task" in statement:
            statements.append((statement, parameters))

    event.listen(camins.db.write_engine, "before_cursor_execute", capture)
    try:
        camins.inbox(principal(camins, "ts.manacor"))
    finally:
        event.remove(camins.db.write_engine, "before_cursor_execute", capture)
    assert len(statements) == 2  # the count, then the page
    with camins.db.read() as session:
        plans = [" | ".join(row[-1] for row in session.connection().exec_driver_sql(
            "EXPLAIN QUERY PLAN " + statement, parameters)) for statement, parameters in statements]
    count, page = plans
    assert "COVERING INDEX ix_human_task_inbox" in count
    assert "INDEX ix_human_task_inbox" in page and "TEMP B-TREE" not in page
