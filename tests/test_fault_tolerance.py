"""Trial errors, stop requests, late results, version checks and concurrent coordinators."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psycopg2
import pytest
import torch
from optuna.trial import TrialState

from coordinator.create import create_experiment
from shared.cleaning import load_dataset
from shared.datasets import make_spec
from shared.errors import ExperimentMismatchError, StorageError
from shared.experiment import ExperimentSettings, dataset_identity
from shared.search_space import load_search_space
from shared.storage import open_storage
from shared.training import NonFiniteLossError
from tests.conftest import REPO_ROOT, TINY_SPACE, run_command, tiny_experiment_args
from worker import loop as worker_loop
from worker.loop import EXIT_TOO_MANY_FAILURES, Worker, WorkerOptions

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _create(storage_url: str, data: Path, experiment: str = "ft", **overrides):
    spec = make_spec(str(data), smiles_column="smiles", label_column="p_np")
    values = dict(dataset=dataset_identity(spec), trials_per_fold=2, search_space=load_search_space(str(TINY_SPACE)),
                  n_folds=2, max_epochs=2, batch_size=32)
    values.update(overrides)
    storage = open_storage(storage_url, create_schema=True)
    create_experiment(storage_url, storage, experiment, ExperimentSettings(**values), load_dataset(spec), spec.path)
    return storage


def _worker(storage_url: str, experiment: str = "ft", stop: threading.Event | None = None) -> Worker:
    options = WorkerOptions(
        storage=storage_url, experiment=experiment, worker_id="ft-worker", device=torch.device("cpu"),
        logdir=None, data_path=None, connect_timeout_s=5, heartbeat_interval=30, grace_period=300,
        poll_interval_s=0.2,
    )
    return Worker(options, stop or threading.Event())


def _trials(storage, experiment: str = "ft", folds: int = 2) -> list[list[optuna.trial.FrozenTrial]]:
    return [optuna.load_study(study_name=f"{experiment}-fold{k}", storage=storage).get_trials() for k in range(folds)]


def _assert_exact_budget(storage, budget: int, experiment: str = "ft", folds: int = 2) -> None:
    for fold, trials in enumerate(_trials(storage, experiment, folds)):
        states = [t.state.name for t in trials]
        assert sum(t.state in FINISHED for t in trials) == budget, f"fold {fold}: {states}"
        assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials), f"fold {fold}: {states}"


def test_all_pruned_study_still_ends(storage_url, small_csv):
    storage = _create(storage_url, small_csv, pruner={"name": "threshold", "lower": 1.1, "n_warmup_steps": 0})
    assert _worker(storage_url).run() == 0
    _assert_exact_budget(storage, budget=2)
    for trials in _trials(storage):
        assert all(t.state == TrialState.PRUNED for t in trials)
        assert all("held_out_auc" in t.user_attrs for t in trials), "pruned trials keep their held-out AUC"


def test_trial_errors_fail_only_that_trial(storage_url, small_csv, monkeypatch, caplog):
    storage = _create(storage_url, small_csv)
    errors = [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
              NonFiniteLossError("training loss became nan after 64 molecules")]
    real_train_trial = worker_loop.train_trial

    def flaky_train_trial(*args, **kwargs):
        if errors:
            raise errors.pop(0)
        return real_train_trial(*args, **kwargs)

    monkeypatch.setattr(worker_loop, "train_trial", flaky_train_trial)
    assert _worker(storage_url).run() == 0
    _assert_exact_budget(storage, budget=2)
    failed = [t for trials in _trials(storage) for t in trials if t.state == TrialState.FAIL]
    messages = sorted(t.user_attrs["error"] for t in failed)
    assert len(messages) == 2
    assert messages[0].startswith("CUDA out of memory")
    assert messages[1].startswith("non-finite loss")


def test_bad_configuration_fails_trial_and_worker_stops(storage_url, small_csv, monkeypatch, caplog):
    storage = _create(storage_url, small_csv)

    def broken_train_trial(*args, **kwargs):
        raise ValueError("hidden size must be positive")

    monkeypatch.setattr(worker_loop, "train_trial", broken_train_trial)
    assert _worker(storage_url).run() == EXIT_TOO_MANY_FAILURES
    failed = [t for trials in _trials(storage) for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 3, "the worker stops after 3 failures in a row"
    assert all(t.user_attrs["error"] == "ValueError: hidden size must be positive" for t in failed)
    assert "3 trials failed in a row" in caplog.text


def test_late_result_is_rejected_and_worker_carries_on(storage_url, small_csv, monkeypatch, caplog):
    """Another worker fails the trial as stale mid-training; its own result must then be discarded."""
    storage = _create(storage_url, small_csv)
    real_train_trial = worker_loop.train_trial
    taken_over = []

    def train_then_lose_the_trial(trial, *args, **kwargs):
        if not taken_over:
            frozen = trial.study._storage.get_trial(trial._trial_id)
            taken_over.append(frozen.number)
            from shared.recovery import fail_and_retry

            assert fail_and_retry(trial.study, frozen, "heartbeat stale (test)", max_retries=2)
        return real_train_trial(trial, *args, **kwargs)

    monkeypatch.setattr(worker_loop, "train_trial", train_then_lose_the_trial)
    assert _worker(storage_url).run() == 0
    _assert_exact_budget(storage, budget=2)
    fold0 = _trials(storage)[0]
    lost = fold0[taken_over[0]]
    assert lost.state == TrialState.FAIL
    assert "held_out_auc" not in lost.user_attrs, "no result may be written to the failed trial"
    retry = [t for t in fold0 if t.user_attrs.get("retry_of") == lost.number]
    assert len(retry) == 1
    assert retry[0].state in FINISHED
    assert retry[0].params == lost.params
    assert "already finished by another worker" in caplog.text


def test_project_version_mismatch_fails_fast(storage_url, small_csv):
    storage = _create(storage_url, small_csv)
    for k in range(2):
        optuna.load_study(study_name=f"ft-fold{k}", storage=storage).set_user_attr("hpo_version", "0.0.1")
    with pytest.raises(ExperimentMismatchError, match="created by smiles-hpo 0.0.1.*install smiles-hpo 0.0.1"):
        _worker(storage_url).run()


@pytest.mark.postgres
def test_optuna_schema_mismatch_fails_fast_without_upgrade(pg_url, small_csv):
    _create(pg_url, small_csv)
    database = pg_url.rsplit("/", 1)[1]
    with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=database) as connection:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE alembic_version SET version_num = 'v3.0.0.a'")
    with pytest.raises(StorageError, match="optuna storage upgrade"):
        _worker(pg_url).run()
    with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=database) as connection:
        with connection.cursor() as cursor:
            cursor.execute("SELECT version_num FROM alembic_version")
            assert cursor.fetchone()[0] == "v3.0.0.a", "a worker must never upgrade the schema"


@pytest.mark.postgres
def test_concurrent_coordinators_create_one_set(pg_url, small_csv):
    args = tiny_experiment_args(pg_url, "race", small_csv)
    processes = [
        subprocess.Popen([sys.executable, "-m", "coordinator", "create", *args], cwd=REPO_ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert [code for code, _ in results] == [0, 0, 0, 0], "\n".join(err for _, err in results)
    storage = open_storage(pg_url, create_schema=False)
    assert sorted(optuna.get_all_study_names(storage)) == ["race-fold0", "race-fold1", "race-fold2"]
    for k in range(3):
        trials = optuna.load_study(study_name=f"race-fold{k}", storage=storage).get_trials()
        assert len(trials) == 1, f"fold {k}: the baseline must be enqueued exactly once"


@pytest.mark.slow
def test_sigterm_fails_and_retries_trial(storage_url, small_csv, tmp_path):
    # Slow trials (many epochs, a big model) so SIGTERM arrives mid-training.
    space = tmp_path / "space.toml"
    space.write_text(TINY_SPACE.read_text().replace("d_model = 8\nnum_layers = 2", "d_model = 16\nnum_layers = 2"))
    args = tiny_experiment_args(storage_url, "term", small_csv, trials=1, folds=2)
    args[args.index("--max-epochs") + 1] = "200"
    args += ["--patience", "200"]
    assert run_command("-m", "coordinator", "create", *args).returncode == 0

    worker = subprocess.Popen(
        [sys.executable, "-m", "worker", "--storage", storage_url, "--experiment", "term", "--worker-id", "victim",
         "--threads", "1"], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    for line in worker.stdout:
        if "started:" in line:
            break
    time.sleep(1.0)
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    output = worker.communicate(timeout=30)[0]
    assert time.monotonic() - sent < 10, "the worker must stop within 10 s of SIGTERM"
    assert worker.returncode == 0, output

    storage = open_storage(storage_url, create_schema=False)
    trials = [t for fold in _trials(storage, "term") for t in fold]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1, [t.state.name for t in trials]
    assert failed[0].user_attrs["fail_reason"] == "worker victim was stopped"
    retries = [t for t in trials if t.user_attrs.get("retry_of") == failed[0].number and t.state == TrialState.WAITING]
    assert len(retries) == 1, "the interrupted trial must be enqueued again"
    assert retries[0].system_attrs["fixed_params"] == failed[0].params


@pytest.mark.slow
def test_local_run_recovers_a_killed_worker(small_csv, tmp_path):
    args = tiny_experiment_args("", "killed", small_csv, trials=2, folds=2)[2:]
    args[args.index("--max-epochs") + 1] = "12"
    args += ["--patience", "12"]
    run = subprocess.Popen(
        [sys.executable, "-m", "coordinator.local", "--workdir", str(tmp_path), "--workers", "2", *args],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    victim_pid = None
    for line in run.stdout:
        if "started worker local-0 (pid" in line:
            victim_pid = int(line.rsplit("pid ", 1)[1].rstrip(")\n"))
        if "worker local-0" in line and "started:" in line:
            break
    assert victim_pid is not None
    time.sleep(0.5)
    subprocess.run(["kill", "-9", str(victim_pid)], check=True)
    output = run.communicate(timeout=600)[0]
    assert run.returncode == 0, output
    assert "worker local-0 exited with status -9; recovered 1 running trials" in output

    storage = open_storage(str(tmp_path / "killed" / "journal.log"), create_schema=False)
    _assert_exact_budget(storage, budget=2, experiment="killed")
    trials = [t for fold in _trials(storage, "killed") for t in fold]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    assert failed[0].user_attrs["fail_reason"] == "worker local-0 exited with status -9"
    assert any(t.user_attrs.get("retry_of") == failed[0].number and t.state in FINISHED for t in trials)


@pytest.mark.postgres
@pytest.mark.slow
def test_worker_connections_stay_bounded(pg_url, small_csv):
    args = tiny_experiment_args(pg_url, "pool", small_csv, trials=1, folds=6)
    assert run_command("-m", "coordinator", "create", *args).returncode == 0
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker", "--storage", pg_url, "--experiment", "pool", "--worker-id", "pool-w",
         "--threads", "1", "--heartbeat-interval", "1", "--grace-period", "10"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    counts = []
    monitor = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    monitor.autocommit = True
    with monitor.cursor() as cursor:
        while worker.poll() is None:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", ("hpo-worker pool-w",))
            counts.append(cursor.fetchone()[0])
            time.sleep(0.05)
    monitor.close()
    assert worker.returncode == 0, worker.stdout.read()
    assert max(counts) >= 1, "the worker's connections must carry its application_name"
    assert max(counts) <= 4, f"a worker serving 6 folds held up to {max(counts)} connections"


def test_claim_without_lock_over_budget_is_failed(tmp_path, small_csv, monkeypatch):
    """A claim whose lock was lost, while another worker filled the fold, gives its trial up."""
    storage_url = str(tmp_path / "journal.log")
    storage = _create(storage_url, small_csv, trials_per_fold=1, n_folds=2,
                      search_space={**load_search_space(str(TINY_SPACE)), "baseline": None})
    real_lock = worker_loop.experiment_lock
    intruded = []

    @contextlib.contextmanager
    def losing_lock(storage_setting, lock_storage, experiment):
        with real_lock(storage_setting, lock_storage, experiment) as state:
            yield state
        if not intruded:
            # What a second worker could do after the server dropped our lock:
            # claim and finish a trial in the fold this claim just took.
            fold = next(k for k, trials in enumerate(_trials(storage)) if trials)
            study = optuna.load_study(study_name=f"ft-fold{fold}", storage=storage)
            intruder = study.ask({"embedding_dim": optuna.distributions.CategoricalDistribution([8])})
            intruder.set_user_attr("worker_id", "intruder")
            intruder.set_user_attr("held_out_auc", 0.5)
            study.tell(intruder, 0.5)
            intruded.append(fold)
            state.lost = True

    monkeypatch.setattr(worker_loop, "experiment_lock", losing_lock)
    assert _worker(storage_url).run() == 0
    _assert_exact_budget(storage, budget=1)
    claimed = [t for t in _trials(storage)[intruded[0]] if t.user_attrs.get("worker_id") == "ft-worker"]
    assert claimed[0].state == TrialState.FAIL
    assert claimed[0].user_attrs["fail_reason"] == "claimed without the experiment lock, over budget"
