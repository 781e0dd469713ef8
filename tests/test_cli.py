"""The console commands as users run them: end-to-end runs and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from shared.storage import open_storage
from tests.conftest import REPO_ROOT, run_command, tiny_experiment_args


def _worker_process(storage: str, experiment: str, worker_id: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "--storage", storage, "--experiment", experiment,
         "--worker-id", worker_id, "--threads", "1", "--poll-interval", "0.5"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.slow
def test_two_workers_share_every_fold(storage_url, small_csv, tmp_path):
    create = run_command("-m", "coordinator", "create", *tiny_experiment_args(storage_url, "shared-run", small_csv, trials=3))
    assert create.returncode == 0, create.stderr

    workers = [_worker_process(storage_url, "shared-run", f"w{i}") for i in (1, 2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output

    storage = open_storage(storage_url, create_schema=False)
    seen_workers = set()
    for fold in range(3):
        study = optuna.load_study(study_name=f"shared-run-fold{fold}", storage=storage)
        trials = study.get_trials()
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == 3, f"fold {fold}: {[t.state.name for t in trials]}"
        assert all(t.state != TrialState.RUNNING and t.state != TrialState.WAITING for t in trials)
        seen_workers |= {t.user_attrs["worker_id"] for t in finished}
    assert seen_workers == {"w1", "w2"}, "both workers must have trained trials"

    report_path = tmp_path / "report.json"
    report = run_command("-m", "coordinator", "report", "--storage", storage_url, "--experiment", "shared-run",
                         "--output", str(report_path))
    assert report.returncode == 0, report.stderr
    assert "held-out ROC-AUC over 3 folds" in report.stdout
    saved = json.loads(report_path.read_text())
    assert saved["complete"] is True
    assert saved["held_out_auc"]["n"] == 3
    assert all(f["best"]["held_out_auc"] is not None for f in saved["folds"])


@pytest.mark.postgres
def test_optuna_cli_lists_fold_studies(pg_url, small_csv):
    create = run_command("-m", "coordinator", "create", *tiny_experiment_args(pg_url, "listed", small_csv))
    assert create.returncode == 0, create.stderr
    optuna_cli = os.path.join(os.path.dirname(sys.executable), "optuna")
    listing = subprocess.run([optuna_cli, "studies", "--storage", pg_url], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    for fold in range(3):
        assert f"listed-fold{fold}" in listing.stdout


def test_create_rerun_prints_nothing_to_do(storage_url, small_csv):
    args = tiny_experiment_args(storage_url, "again", small_csv)
    assert run_command("-m", "coordinator", "create", *args).returncode == 0
    rerun = run_command("-m", "coordinator", "create", *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "already exists with the same settings" in rerun.stdout


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--dataset", "nowhere.csv"], ["'nowhere.csv'", "built-in name"]),
        (["--trials-per-fold", "0"], ["trials-per-fold=0"]),
        (["--search-space", "missing.toml"], ["'missing.toml'"]),
        (["--experiment", "bad name!"], ["'bad name!'"]),
    ],
)
def test_create_bad_input(tmp_path, args, fragments):
    base = ["--storage", str(tmp_path / "j.log"), "--experiment", "ok", "--dataset", "b3db"]
    result = run_command("-m", "coordinator", "create", *base, *args)
    _assert_one_line_error(result, *fragments)
    assert not (tmp_path / "j.log").exists(), "a rejected command must not create the storage"


def test_missing_storage_names_the_variable(tmp_path):
    result = run_command("-m", "worker", "--experiment", "x", env={"HPO_STORAGE": ""})
    _assert_one_line_error(result, "--storage", "HPO_STORAGE")


def test_sqlite_is_rejected(tmp_path):
    result = run_command("-m", "coordinator", "status", "--storage", f"sqlite:///{tmp_path}/x.db", "--experiment", "x")
    _assert_one_line_error(result, "SQLite")


def test_unreachable_database_hides_the_password():
    url = "postgresql+psycopg2://hpo:s3cret-pass@127.0.0.1:9/hpo"
    result = run_command("-m", "worker", "--storage", url, "--experiment", "x", "--connect-timeout", "2")
    _assert_one_line_error(result, "not reachable", "hpo:***@127.0.0.1:9")
    assert "s3cret-pass" not in result.stderr + result.stdout


def test_unknown_experiment(storage_url, small_csv):
    run_command("-m", "coordinator", "create", *tiny_experiment_args(storage_url, "known", small_csv))
    result = run_command("-m", "coordinator", "status", "--storage", storage_url, "--experiment", "unknown")
    _assert_one_line_error(result, "'unknown' not found", "hpo-coordinator create")


def test_worker_with_other_data_exits_with_fingerprint_error(storage_url, small_csv, tmp_path):
    run_command("-m", "coordinator", "create", *tiny_experiment_args(storage_url, "fp", small_csv))
    changed = tmp_path / "changed.csv"
    changed.write_text("\n".join(small_csv.read_text().splitlines()[:-3]) + "\n")
    result = run_command("-m", "worker", "--storage", storage_url, "--experiment", "fp", "--data", str(changed))
    _assert_one_line_error(result, "fingerprint", "--data")


@pytest.mark.slow
def test_local_run_end_to_end(small_csv, tmp_path):
    result = run_command(
        "-m", "coordinator.local", "--workdir", str(tmp_path / "runs"), "--workers", "2", "-q",
        *tiny_experiment_args("", "local-e2e", small_csv)[2:],
    )
    assert result.returncode == 0, result.stderr
    assert "held-out ROC-AUC over 3 folds" in result.stdout
    report = json.loads((tmp_path / "runs" / "local-e2e" / "report.json").read_text())
    assert report["complete"] is True
    logs = list((tmp_path / "runs" / "local-e2e" / "tensorboard" / "local-e2e-fold0").glob("trial-*"))
    assert len(logs) == 2, "one TensorBoard folder per trial"


def test_report_json_to_stdout(storage_url, small_csv):
    run_command("-m", "coordinator", "create", *tiny_experiment_args(storage_url, "stdout", small_csv))
    result = run_command("-m", "coordinator", "report", "--storage", storage_url, "--experiment", "stdout",
                         "--output", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["experiment"] == "stdout"
    assert report["complete"] is False
    assert "cross-validation report" in result.stderr


def test_malformed_port_is_one_line_error():
    result = run_command("-m", "worker", "--storage", "postgresql+psycopg2://hpo:s3cret-pass@127.0.0.1:notaport/hpo",
                         "--experiment", "x")
    _assert_one_line_error(result, "storage URL", "invalid", "USER:PASSWORD@HOST:PORT/DATABASE")
    assert "s3cret-pass" not in result.stderr + result.stdout


@pytest.mark.postgres
def test_missing_database_fails_without_waiting(pg_url):
    missing = pg_url.rsplit("/", 1)[0] + "/hpo_missing_database"
    result = run_command("-m", "worker", "--storage", missing, "--experiment", "x", "--connect-timeout", "600",
                         timeout=60)
    _assert_one_line_error(result, "rejected the connection", "does not exist", "database name")
