"""Samplers, pruners and trial seeds, built identically in every process from stored settings.

Optuna does not store samplers or pruners, so each worker rebuilds them from
the experiment settings.
"""

from __future__ import annotations

import hashlib
from typing import Any

import optuna

from shared.errors import ConfigError

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "threshold", "none")


def build_sampler(config: dict[str, Any], worker_seed: int | None) -> optuna.samplers.BaseSampler:
    """Build the sampler; ``worker_seed`` must differ between workers, or they propose the same trials."""
    name = config.get("name")
    if name == "tpe":
        # multivariate and constant_liar are pinned explicitly because their
        # defaults changed across Optuna releases. constant_liar makes TPE treat
        # running trials as bad, so concurrent workers spread out.
        return optuna.samplers.TPESampler(
            n_startup_trials=int(config.get("n_startup_trials", 10)),
            multivariate=bool(config.get("multivariate", True)),
            constant_liar=bool(config.get("constant_liar", True)),
            seed=worker_seed,
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=worker_seed)
    raise ConfigError(f"sampler {name!r} is unknown: use one of {', '.join(SAMPLERS)}")


def build_pruner(config: dict[str, Any]) -> optuna.pruners.BasePruner:
    name = config.get("name")
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(config.get("n_startup_trials", 5)),
            n_warmup_steps=int(config.get("n_warmup_steps", 5)),
        )
    if name == "threshold":
        # Prunes a trial whose dev AUC is below `lower` after the warm-up epochs.
        return optuna.pruners.ThresholdPruner(
            lower=float(config.get("lower", 0.5)), n_warmup_steps=int(config.get("n_warmup_steps", 0)),
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"pruner {name!r} is unknown: use one of {', '.join(PRUNERS)}")


def trial_seed(experiment_seed: int, study_name: str, trial_number: int) -> int:
    """Derive a trial's training seed from the experiment seed, its study and its number."""
    digest = hashlib.sha256(f"{experiment_seed}:{study_name}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
