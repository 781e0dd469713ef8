"""Create an experiment's fold studies once; a rerun with the same settings changes nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage

from shared.cleaning import CleanDataset
from shared.errors import ExperimentMismatchError
from shared.experiment import HPO_FORMAT, ExperimentSettings, package_version, study_name
from shared.splits import FoldSplit, make_splits
from shared.storage import experiment_lock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreateResult:
    created: list[int]
    completed: list[int]  # folds found half-created and finished now
    unchanged: list[int]


def fold_attributes(
    experiment: str,
    fold: int,
    settings: ExperimentSettings,
    dataset: CleanDataset,
    dataset_path: str | None,
    split: FoldSplit,
) -> dict[str, Any]:
    return {
        "hpo_format": HPO_FORMAT,
        "hpo_version": package_version(),
        "experiment": experiment,
        "fold": fold,
        "settings": settings.as_dict(),
        "dataset_fingerprint": dataset.fingerprint,
        "n_molecules": len(dataset.smiles),
        "dataset_path": dataset_path,
        "split": split.encode(len(dataset.smiles)),
        "split_counts": split.counts(),
    }


def _differences(stored: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Describe each compared attribute that differs, recursing one level into settings."""
    lines = []
    for key in ("hpo_format", "hpo_version", "dataset_fingerprint", "n_molecules", "settings", "split"):
        old, new = stored.get(key), expected[key]
        if old == new:
            continue
        if key == "settings" and isinstance(old, dict):
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    lines.append(f"{name}: stored {old.get(name)!r}, given {new.get(name)!r}")
        elif key == "split":
            lines.append("split: the stored fold assignment differs from the one computed now")
        else:
            lines.append(f"{key}: stored {old!r}, given {new!r}")
    return lines


def create_experiment(
    storage_setting: str,
    storage: BaseStorage,
    experiment: str,
    settings: ExperimentSettings,
    dataset: CleanDataset,
    dataset_path: str | None,
) -> CreateResult:
    """Create the K fold studies with splits and the enqueued baseline, or check the existing ones."""
    splits = make_splits(
        dataset.smiles, dataset.labels, n_folds=settings.n_folds, kind=settings.split,
        dev_fraction=settings.dev_fraction, seed=settings.seed,
    )
    created, completed, unchanged = [], [], []
    with experiment_lock(storage_setting, storage, experiment):
        existing = set(optuna.get_all_study_names(storage))
        _check_no_extra_folds(experiment, existing, settings.n_folds)
        for fold, split in enumerate(splits):
            name = study_name(experiment, fold)
            expected = fold_attributes(experiment, fold, settings, dataset, dataset_path, split)
            if name in existing:
                study = optuna.load_study(study_name=name, storage=storage)
                if study.user_attrs.get("ready"):
                    differences = _differences(study.user_attrs, expected)
                    if differences:
                        raise ExperimentMismatchError(
                            f"experiment {experiment!r} already exists with other settings ({'; '.join(differences)}): "
                            "use a new experiment name, or rerun with the stored settings"
                        )
                    unchanged.append(fold)
                    continue
                completed.append(fold)
            else:
                study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
                created.append(fold)
            _fill_fold(study, expected, settings)
    return CreateResult(created, completed, unchanged)


def _fill_fold(study: optuna.Study, attributes: dict[str, Any], settings: ExperimentSettings) -> None:
    for key, value in attributes.items():
        study.set_user_attr(key, value)
    baseline = settings.search_space.get("baseline")
    # The baseline is enqueued while the fold is not yet ready, and only if the
    # study has no trials, so neither a rerun nor a resumed half-created fold
    # enqueues it twice.
    if baseline and not study.get_trials(deepcopy=False):
        study.enqueue_trial(dict(baseline), user_attrs={"baseline": True})
    study.set_user_attr("ready", True)
    logger.info("fold study %s is ready (%s)", study.study_name, attributes["split_counts"])


def _check_no_extra_folds(experiment: str, existing: set[str], n_folds: int) -> None:
    prefix = f"{experiment}-fold"
    extra = sorted(
        name for name in existing
        if name.startswith(prefix) and name[len(prefix):].isdigit() and int(name[len(prefix):]) >= n_folds
    )
    if extra:
        raise ExperimentMismatchError(
            f"experiment {experiment!r} has studies beyond {n_folds} folds ({', '.join(extra)}): "
            "use a new experiment name, or the stored number of folds"
        )
