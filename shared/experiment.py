"""Experiments: K fold studies with their settings, splits and data fingerprint stored.

Each fold study ``<experiment>-fold<k>`` carries these study user attributes:

* ``hpo_format``: the layout version of these attributes;
* ``hpo_version``: the smiles-hpo release that created it; workers must match it;
* ``experiment``, ``fold``: its identity;
* ``settings``: every setting that changes results (dataset columns, folds,
  budget, epochs, search space, sampler, pruner), identical in all folds;
* ``dataset_fingerprint``, ``n_molecules``: the cleaned data it was split from;
* ``dataset_path``: where the coordinator read a file dataset, a hint for workers;
* ``split``, ``split_counts``: the fold's train/dev/held-out assignment;
* ``ready``: written last, so a worker never serves a half-created fold.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage

from shared.datasets import DatasetSpec
from shared.errors import ConfigError, ExperimentMismatchError, StorageError

HPO_FORMAT = 1


def package_version() -> str:
    try:
        return importlib.metadata.version("smiles-hpo")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

DEFAULT_SAMPLER = {"name": "tpe", "n_startup_trials": 10, "multivariate": True, "constant_liar": True}
DEFAULT_PRUNER = {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 5}


@dataclass(frozen=True)
class ExperimentSettings:
    """Every setting that changes the results, stored with each fold study."""

    dataset: dict[str, Any]  # DatasetSpec fields without the path
    trials_per_fold: int
    search_space: dict[str, Any]
    n_folds: int = 5
    split: str = "stratified"
    dev_fraction: float = 0.2
    seed: int = 0
    max_epochs: int = 30
    patience: int = 5
    batch_size: int = 64
    sampler: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLER))
    pruner: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PRUNER))
    max_retries: int = 2

    def __post_init__(self) -> None:
        positive = {
            "trials_per_fold": self.trials_per_fold, "max_epochs": self.max_epochs,
            "patience": self.patience, "batch_size": self.batch_size,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name.replace('_', '-')}={value} is invalid: use a whole number of at least 1")
        if self.max_retries < 0:
            raise ConfigError(f"max-retries={self.max_retries} is invalid: use 0 or more")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentSettings:
        return cls(**values)

    def dataset_spec(self, path: str | None) -> DatasetSpec:
        return DatasetSpec(path=path, **self.dataset)


def dataset_identity(spec: DatasetSpec) -> dict[str, Any]:
    values = asdict(spec)
    values.pop("path")
    return values


def validate_experiment_name(name: str) -> str:
    if not _NAME_PATTERN.match(name or ""):
        raise ConfigError(
            f"experiment name {name!r} is invalid: use 1-100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def study_name(experiment: str, fold: int) -> str:
    return f"{experiment}-fold{fold}"


@dataclass(frozen=True)
class FoldRecord:
    fold: int
    study_name: str
    split: str  # encoded, see shared.splits.FoldSplit


@dataclass(frozen=True)
class ExperimentRecord:
    name: str
    settings: ExperimentSettings
    fingerprint: str
    n_molecules: int
    dataset_path: str | None
    folds: list[FoldRecord]


def load_experiment(storage: BaseStorage, experiment: str) -> ExperimentRecord:
    """Read an experiment's stored settings and splits, checking that its folds agree."""
    pattern = re.compile(rf"^{re.escape(experiment)}-fold(\d+)$")
    names = [name for name in optuna.get_all_study_names(storage) if pattern.match(name)]
    if not names:
        raise StorageError(f"experiment {experiment!r} not found in the storage: run `hpo-coordinator create` first")
    attrs_by_fold = {}
    for name in names:
        attrs = optuna.load_study(study_name=name, storage=storage).user_attrs
        if not attrs.get("ready"):
            raise StorageError(
                f"study {name} is not fully created: run `hpo-coordinator create` again to finish it"
            )
        if attrs.get("hpo_format") != HPO_FORMAT:
            raise ExperimentMismatchError(
                f"study {name} has attribute format {attrs.get('hpo_format')!r}, this version reads "
                f"{HPO_FORMAT}: run workers of the same version as the coordinator"
            )
        if attrs.get("hpo_version") != package_version():
            raise ExperimentMismatchError(
                f"study {name} was created by smiles-hpo {attrs.get('hpo_version')}, this process runs "
                f"{package_version()}: install smiles-hpo {attrs.get('hpo_version')} here, or create a new experiment"
            )
        attrs_by_fold[int(attrs["fold"])] = (name, attrs)

    first = attrs_by_fold[min(attrs_by_fold)][1]
    settings = ExperimentSettings.from_dict(first["settings"])
    if sorted(attrs_by_fold) != list(range(settings.n_folds)):
        raise StorageError(
            f"experiment {experiment!r} has folds {sorted(attrs_by_fold)}, expected 0-{settings.n_folds - 1}: "
            "run `hpo-coordinator create` again to finish it"
        )
    for fold, (name, attrs) in attrs_by_fold.items():
        if attrs["settings"] != first["settings"] or attrs["dataset_fingerprint"] != first["dataset_fingerprint"]:
            raise ExperimentMismatchError(f"study {name} disagrees with fold 0 on settings or data")
    folds = [FoldRecord(fold, name, attrs["split"]) for fold, (name, attrs) in sorted(attrs_by_fold.items())]
    return ExperimentRecord(
        experiment, settings, first["dataset_fingerprint"], int(first["n_molecules"]),
        first.get("dataset_path"), folds,
    )
