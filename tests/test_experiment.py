"""Coordinator and worker against each storage: creation, reruns, stored splits, fingerprints."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from coordinator.create import create_experiment
from shared import splits as splits_module
from shared.cleaning import load_dataset
from shared.datasets import make_spec
from shared.errors import ExperimentMismatchError
from shared.experiment import ExperimentSettings, dataset_identity, load_experiment
from shared.search_space import load_search_space
from shared.splits import FoldSplit, make_splits
from shared.storage import open_storage
from tests.conftest import TINY_SPACE
from worker.loop import Worker, WorkerOptions


def _setup(storage_url: str, data: Path, **overrides):
    spec = make_spec(str(data), smiles_column="smiles", label_column="p_np")
    values = dict(dataset=dataset_identity(spec), trials_per_fold=2, search_space=load_search_space(str(TINY_SPACE)),
                  n_folds=3, max_epochs=2, batch_size=32)
    values.update(overrides)
    settings = ExperimentSettings(**values)
    dataset = load_dataset(spec)
    storage = open_storage(storage_url, create_schema=True)
    return storage, settings, dataset, spec


def _worker(storage_url: str, experiment: str, data_path: str | None = None) -> Worker:
    options = WorkerOptions(
        storage=storage_url, experiment=experiment, worker_id="test-worker", device=torch.device("cpu"),
        logdir=None, data_path=data_path, connect_timeout_s=5, heartbeat_interval=30, grace_period=300,
        poll_interval_s=0.2,
    )
    return Worker(options, threading.Event())


def test_create_stores_splits_and_enqueues_baseline(storage_url, small_csv):
    storage, settings, dataset, spec = _setup(storage_url, small_csv)
    result = create_experiment(storage_url, storage, "exp", settings, dataset, spec.path)
    assert result.created == [0, 1, 2]

    names = sorted(optuna.get_all_study_names(storage))
    assert names == ["exp-fold0", "exp-fold1", "exp-fold2"]
    expected = make_splits(dataset.smiles, dataset.labels, n_folds=3, kind="stratified", dev_fraction=0.2, seed=0)
    for fold, name in enumerate(names):
        study = optuna.load_study(study_name=name, storage=storage)
        assert study.direction == optuna.study.StudyDirection.MAXIMIZE
        attrs = study.user_attrs
        assert attrs["dataset_fingerprint"] == dataset.fingerprint
        assert attrs["settings"] == settings.as_dict()
        stored = FoldSplit.decode(attrs["split"], len(dataset.smiles))
        assert np.array_equal(stored.held_out, expected[fold].held_out)
        waiting = study.get_trials(states=(TrialState.WAITING,))
        assert len(waiting) == 1, f"{name}: the baseline must be enqueued once"
        assert waiting[0].system_attrs["fixed_params"] == settings.search_space["baseline"]


def test_rerun_is_idempotent(storage_url, small_csv):
    storage, settings, dataset, spec = _setup(storage_url, small_csv)
    create_experiment(storage_url, storage, "exp", settings, dataset, spec.path)
    before = {n: optuna.load_study(study_name=n, storage=storage).user_attrs for n in optuna.get_all_study_names(storage)}

    again = create_experiment(storage_url, storage, "exp", settings, dataset, spec.path)
    assert again.created == []
    assert again.unchanged == [0, 1, 2]
    for name, attrs in before.items():
        study = optuna.load_study(study_name=name, storage=storage)
        assert study.user_attrs == attrs
        assert len(study.get_trials()) == 1, f"{name}: a rerun must not enqueue the baseline again"


def test_rerun_with_other_settings_names_the_difference(storage_url, small_csv):
    storage, settings, dataset, spec = _setup(storage_url, small_csv)
    create_experiment(storage_url, storage, "exp", settings, dataset, spec.path)
    _, other, _, _ = _setup(storage_url, small_csv, trials_per_fold=5, max_epochs=4)
    with pytest.raises(ExperimentMismatchError, match=r"max_epochs: stored 2, given 4; trials_per_fold: stored 2, given 5"):
        create_experiment(storage_url, storage, "exp", other, dataset, spec.path)


def test_rerun_with_other_data_is_rejected(storage_url, small_csv, tmp_path):
    storage, settings, dataset, spec = _setup(storage_url, small_csv)
    create_experiment(storage_url, storage, "exp", settings, dataset, spec.path)
    changed = tmp_path / "changed.csv"
    changed.write_text("\n".join(small_csv.read_text().splitlines()[:-5]) + "\n")
    _, _, other_data, other_spec = _setup(storage_url, changed)
    with pytest.raises(ExperimentMismatchError, match="dataset_fingerprint: stored"):
        create_experiment(storage_url, storage, "exp", settings, other_data, other_spec.path)


def test_half_created_fold_is_finished_on_rerun(storage_url, small_csv):
    storage, settings, dataset, spec = _setup(storage_url, small_csv)
    optuna.create_study(study_name="exp-fold1", storage=storage, direction="maximize")
    with pytest.raises(Exception, match="not fully created"):
        load_experiment(storage, "exp")
    result = create_experiment(storage_url, storage, "exp", settings, dataset, spec.path)
    assert result.completed == [1]
    assert result.created == [0, 2]
    assert len(load_experiment(storage, "exp").folds) == 3


def test_worker_uses_stored_splits_without_recomputing(storage_url, small_csv, monkeypatch):
    storage, settings, dataset, spec = _setup(storage_url, small_csv)
    create_experiment(storage_url, storage, "exp", settings, dataset, spec.path)

    def fail(*_args, **_kwargs):
        raise AssertionError("a worker must read splits from storage, not compute them")

    monkeypatch.setattr(splits_module, "make_splits", fail)
    worker = _worker(storage_url, "exp")
    assert worker.run() == 0

    record = load_experiment(storage, "exp")
    for fold in record.folds:
        stored = FoldSplit.decode(fold.split, record.n_molecules)
        assert np.array_equal(worker.folds[fold.fold].split.dev, stored.dev)
        study = optuna.load_study(study_name=fold.study_name, storage=storage)
        finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
        assert len(finished) == settings.trials_per_fold
        assert all("held_out_auc" in t.user_attrs for t in finished)
        assert all(t.user_attrs["worker_id"] == "test-worker" for t in finished)
        assert finished[0].user_attrs.get("baseline") is True, "the baseline runs first"


def test_worker_rejects_other_data(storage_url, small_csv, tmp_path):
    storage, settings, dataset, spec = _setup(storage_url, small_csv)
    create_experiment(storage_url, storage, "exp", settings, dataset, spec.path)
    changed = tmp_path / "changed.csv"
    changed.write_text("\n".join(small_csv.read_text().splitlines()[:-5]) + "\n")
    worker = _worker(storage_url, "exp", data_path=str(changed))
    with pytest.raises(ExperimentMismatchError, match=r"fingerprint .* --data / HPO_DATA"):
        worker.run()
    for name in optuna.get_all_study_names(storage):
        assert len(optuna.load_study(study_name=name, storage=storage).get_trials()) == 1, "no trial may start"
