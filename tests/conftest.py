"""Shared fixtures: real data files, and the same storages for every test that needs one.

Storage-backed tests run twice, on the embedded journal file and on a fresh
database of the PostgreSQL server at $HPO_TEST_PG (default
postgresql+psycopg2://postgres@127.0.0.1:5432), created and dropped per test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DATA = REPO_ROOT.parent / "shared" / "data"
TINY_SPACE = REPO_ROOT / "tests" / "data" / "tiny-space.toml"
PG_SERVER = os.environ.get("HPO_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")


@pytest.fixture(scope="session")
def bbbp_path() -> Path:
    path = REFERENCE_DATA / "BBBP.csv"
    assert path.is_file(), f"reference BBBP.csv not found at {path}; tests read it from ../shared/data"
    return path


@pytest.fixture
def small_csv(tmp_path: Path, bbbp_path: Path) -> Path:
    """The first 240 BBBP rows: both classes, a few unparsable SMILES, fast to train on."""
    lines = bbbp_path.read_text().splitlines()[:241]
    path = tmp_path / "bbbp-small.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _admin_connection():
    url = make_url(PG_SERVER)
    connection = psycopg2.connect(
        host=url.host, port=url.port or 5432, user=url.username or "postgres",
        password=url.password, dbname="postgres", connect_timeout=5,
    )
    connection.autocommit = True
    return connection


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = _admin_connection()
    except psycopg2.OperationalError as error:
        pytest.fail(f"PostgreSQL at {PG_SERVER} is not reachable ({error}); start it or set HPO_TEST_PG")
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    yield str(make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False))
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(params=["journal", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request, tmp_path: Path) -> str:
    """The storage setting of each backend: a journal file path or a PostgreSQL URL."""
    if request.param == "journal":
        return str(tmp_path / "store" / "journal.log")
    return request.getfixturevalue("pg_url")


def run_command(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run one of the console entry points as a user would, through `python -m`."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=REPO_ROOT,
    )


def tiny_experiment_args(storage: str, experiment: str, data: Path, *, trials: int = 2, folds: int = 3) -> list[str]:
    """Flags of a small experiment on a BBBP file: tiny models, two epochs."""
    return [
        "--storage", storage, "--experiment", experiment,
        "--dataset", str(data), "--smiles-column", "smiles", "--label-column", "p_np",
        "--folds", str(folds), "--trials-per-fold", str(trials), "--max-epochs", "2",
        "--search-space", str(TINY_SPACE), "--batch-size", "32",
    ]
