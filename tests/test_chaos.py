"""Workers under SIGKILL, SIGTERM, a database restart and killed connections keep every fold's budget exact.

The test runs on a private PostgreSQL server (tests/pgcluster.py), because it
restarts the server. scripts/chaos_run.py is the same harness with many more
faults.
"""

from __future__ import annotations

import pytest

from scripts.chaos_run import ChaosRun, ChaosSettings
from tests.conftest import tiny_experiment_args
from tests.pgcluster import PgCluster, PgClusterError

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TRIALS_PER_FOLD = 5
FOLDS = 3
SIGTERM_EXIT_LIMIT_S = 10.0


@pytest.fixture
def private_pg():
    """A PostgreSQL server of this test alone, stopped and deleted afterwards."""
    try:
        cluster = PgCluster()
    except PgClusterError as error:
        pytest.fail(f"private PostgreSQL server for the chaos test is not available: {error}")
    try:
        cluster.start()
    except PgClusterError as error:
        cluster.stop()
        pytest.fail(f"private PostgreSQL server for the chaos test failed to start: {error}")
    try:
        yield cluster
    finally:
        cluster.stop()


def test_chaos_keeps_budgets_exact(private_pg, small_csv, tmp_path):
    database = "chaos"
    storage_url = private_pg.create_database(database)
    settings = ChaosSettings(
        workers=3, kills=3, terms=1, restarts=1, connection_kills=1, seed=7,
        heartbeat_interval=1, grace_period=4, poll_interval=0.5, restart_down_s=1.0,
        term_exit_limit_s=SIGTERM_EXIT_LIMIT_S, timeout_s=300,
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    run = ChaosRun(private_pg, database, "chaos", settings, logs, log=lambda line: None)
    # Three epochs, so that a trial runs long enough to be killed mid-training.
    run.create_experiment(tiny_experiment_args(storage_url, "chaos", small_csv, trials=TRIALS_PER_FOLD, folds=FOLDS)
                          + ["--max-epochs", "3", "--max-retries", "3"])

    result = run.run()
    account = result.describe()

    injected = result.injected()
    assert injected["kill"] == 3, f"3 SIGKILLs expected:\n{account}"
    assert injected["term"] == 1, f"1 SIGTERM expected:\n{account}"
    assert injected["restart"] == 1, f"1 database restart expected:\n{account}"
    assert injected["connection-kill"] == 1, f"1 connection kill expected:\n{account}"

    assert len(result.trials) == FOLDS, account
    for study, trials in sorted(result.trials.items()):
        states = [f"{t.number}:{t.state.name}" for t in trials]
        finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(finished) == TRIALS_PER_FOLD, f"{study} must have exactly its budget finished: {states}\n{account}"
        assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")], \
            f"{study} has trials left open: {states}\n{account}"
        assert all("held_out_auc" in t.user_attrs for t in finished), \
            f"{study} has finished trials without held_out_auc\n{account}"

    kill_to_fail = result.kill_to_fail_seconds()
    assert any(seconds is not None for seconds in kill_to_fail.values()), \
        f"no SIGKILL interrupted a RUNNING trial: {kill_to_fail}\n{account}"

    terminated = [w for w in result.workers if w.signal_name == "SIGTERM"]
    assert len(terminated) == 1, account
    assert terminated[0].exit_code == 0, f"a SIGTERMed worker exits with status 0:\n{account}"
    assert terminated[0].exit_seconds is not None and terminated[0].exit_seconds <= SIGTERM_EXIT_LIMIT_S, \
        f"the SIGTERMed worker took {terminated[0].exit_seconds} s to exit:\n{account}"

    assert not result.unexpected_exits(), f"workers crashed on their own:\n{account}"
    assert result.log_counts["heartbeat stale"] >= 1, f"no stale-heartbeat recovery in the worker logs:\n{account}"
    assert result.log_counts["enqueued retry"] >= 1, f"no retry enqueued in the worker logs:\n{account}"
    assert result.log_counts["was stopped"] >= 1, f"the SIGTERMed trial was not failed as stopped:\n{account}"
    assert result.log_counts["database unreachable"] >= 1, f"no worker logged the database outage:\n{account}"
    assert result.log_counts["reachable again"] >= 1, f"no worker logged the database coming back:\n{account}"
    assert result.problems == [], account
