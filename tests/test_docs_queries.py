"""Every SQL query the docs show runs, and returns rows, on a real twin database.

A short ``gridtwin demo`` (the emulator and ``gridtwin run`` as real processes on loopback,
SQLite historian) fills a database; then every fenced block in README.md and docs/*.md
whose info string is exactly ``sql`` is executed against it. The docs promise that each
returns rows on a demo database as written, so an empty result fails too: a query that
"works" but finds nothing (a wrong stage, a meter id that is only a prefix) is the bug
this test exists for. Blocks marked ``sql mariadb`` are the MySQL forms and are not run
here.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "deploy" / "README.md"]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.M | re.S)


def sql_blocks() -> list[tuple[str, str]]:
    """(where, query) for every block fenced with the info string ``sql``."""
    out = []
    for path in DOCS:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m[1].strip() == "sql":
                line = text.count("\n", 0, m.start()) + 1
                out.append((f"{path.relative_to(ROOT)}:{line}", m[2]))
    return out


BLOCKS = sql_blocks()


def test_the_docs_show_sql() -> None:
    # the historian reference carries the examples; losing them would pass vacuously
    assert len(BLOCKS) >= 5, BLOCKS
    assert any("flagged" in q and "stage = 1" in q for _, q in BLOCKS)


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    from gateway.cli_demo import run_demo

    base = tmp_path_factory.mktemp("docs-demo")
    res = run_demo(base / "run", seconds=8.0, rate=50.0, bad_pct=10.0,
                   cache=str(base / "cache"), progress=False)
    assert res["states"], res  # estimates reached the database
    con = sqlite3.connect(base / "run" / "twin.db")
    try:
        yield con
    finally:
        con.close()


@pytest.mark.parametrize(("where", "query"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_doc_query_returns_rows(demo_db: sqlite3.Connection, where: str, query: str
                                ) -> None:
    rows = demo_db.execute(query).fetchall()
    assert rows, f"{where}: the query returns no rows on a demo database"


def test_bad_data_query_finds_what_the_quality_stage_flagged(
        demo_db: sqlite3.Connection) -> None:
    """The documented "all bad data of a meter" query counts exactly the BAD values the
    corrected stage holds for that meter and its sub-ids, and nothing else."""
    (query,) = [q for _, q in BLOCKS if "corrected_value" in q]
    rows = demo_db.execute(query).fetchall()
    names = {r[2] for r in rows}
    assert names and all(n.startswith("flow.") for n in names)
    assert all(r[4] & 1 for r in rows)
    (want,) = demo_db.execute(
        "SELECT COUNT(*) FROM flagged f JOIN channels c"
        " ON c.run_id = f.run_id AND c.idx = f.channel"
        " WHERE c.kind = 'scada' AND c.name LIKE 'flow.%' AND f.stage = 1"
        " AND (f.flags & 1) <> 0").fetchone()
    assert len(rows) == want
