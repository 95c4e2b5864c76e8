"""The documentation stays true: every WITH option is in the guide, and the examples run as they are.

Like datasette's ``tests/test_docs.py``: options are declared once in ``velosql/options.py``; the
guide's table is generated from them by ``docs/gen_options.py``, and these tests fail when an option
is missing or the generated table is stale (fix: ``python docs/gen_options.py``).
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import velosql
from velosql.options import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide.md"
APPS = sorted((ROOT / "sql").glob("*.sql"))


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_options = _load(ROOT / "docs" / "gen_options.py", "gen_options")
gen_metrics = _load(ROOT / "docs" / "gen_metrics.py", "gen_metrics")


@pytest.fixture(scope="module")
def options_section() -> str:
    text = GUIDE.read_text(encoding="utf-8")
    assert gen_options.START in text and gen_options.END in text, "docs/guide.md lost its option markers"
    return text.split(gen_options.START, 1)[1].split(gen_options.END, 1)[0]


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: f"{o.scope}:{o.name}")
def test_every_option_is_documented(option, options_section):
    row = next((line for line in options_section.splitlines() if line.startswith(f"| {gen_options.written_key(option)} |")), None)  # fmt: skip
    assert row is not None, (
        f"{option.scope} option {option.name!r} is missing: run python docs/gen_options.py"
    )
    assert option.help.split("`")[0].strip()[:30] in row


def test_options_table_is_generated_from_options():
    text = GUIDE.read_text(encoding="utf-8")
    assert gen_options.splice(text, gen_options.render()) == text, (
        "docs/guide.md is out of date with velosql/options.py: run python docs/gen_options.py"
    )


def test_metrics_list_is_generated_from_metrics():
    """docs/serve.md lists every metric ``/metrics`` serves, from ``velosql.metrics.METRICS``."""
    page = (ROOT / "docs" / "serve.md").read_text(encoding="utf-8")
    assert gen_metrics.splice(page, gen_metrics.render()) == page, (
        "docs/serve.md is out of date with velosql/metrics.py: run python docs/gen_metrics.py"
    )


def test_option_keys_are_written_as_users_write_them():
    by_key = {gen_options.written_key(o): o for o in OPTIONS}
    assert "`'<source>.path'`" in by_key
    assert "`'<sink>.type'`" in by_key
    assert "`watermark.max_out_of_orderness`" in by_key
    assert gen_options.default_text(next(o for o in OPTIONS if o.name == "batch_timeout")) == "`'200ms'`"


@pytest.mark.parametrize("app", APPS, ids=lambda p: p.name)
def test_example_application_runs_as_it_is(app, tmp_path, monkeypatch):
    """Each ``sql/*.sql`` runs from a copy of the repository layout and writes its ``out/`` file."""
    shutil.copytree(ROOT / "sql", tmp_path / "sql")
    monkeypatch.chdir(tmp_path)
    with velosql.connect() as engine:
        jobs = engine.run(f"sql/{app.name}", timeout=120)
        assert jobs, f"{app.name} deployed no streaming statement"
        for job in jobs:
            assert job.status == "Finished", (job.name, job.status, job.error)
            assert job.metrics()["records_out"] > 0
            assert job.metrics()["dead_letters"] == 0
    written = [p for p in (tmp_path / "out").iterdir() if p.stat().st_size > 0]
    assert written, f"{app.name} wrote nothing under out/"


def test_trades_example_keeps_its_late_rows(tmp_path, monkeypatch):
    """The README's example: three rows of trades.csv arrive 90 s late and are kept, not lost."""
    shutil.copytree(ROOT / "sql", tmp_path / "sql")
    monkeypatch.chdir(tmp_path)
    with velosql.connect() as engine:
        (job,) = engine.run("sql/trades_1m.sql", timeout=120)
        assert job.metrics()["late_rows"] == 3
        assert engine.sql("SELECT count(*) FROM trades_1m__late").fetchall() == [(3,)]


def test_example_data_is_what_the_generator_writes(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "sql" / "data" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    generated = sorted(p.name for p in tmp_path.iterdir())
    committed = (ROOT / "sql" / "data").iterdir()
    assert generated == sorted(p.name for p in committed if p.is_file() and p.suffix != ".py")
    for name in generated:
        assert (tmp_path / name).read_bytes() == (ROOT / "sql" / "data" / name).read_bytes(), name


def test_embedding_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "examples" / "embed.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "positions: Finished" in out and "bars: Finished" in out
    assert "AAPL" in out and "MSFT" in out


def test_guide_links_point_to_files_that_exist():
    text = GUIDE.read_text(encoding="utf-8")
    for rel in ("sql/trades_1m.sql", "sql/1brc.sql", "sql/filter.sql", "sql/changes.sql", "sql/sessions.sql",
                "examples/embed.py", "tests/test_velostream_compat.py", "docs/gen_options.py"):  # fmt: skip
        assert f"`{rel}`" in text or rel in text, rel
        assert os.path.exists(ROOT / rel), rel
