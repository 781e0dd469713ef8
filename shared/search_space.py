"""Search spaces: loading from TOML, validation, and sampling hyperparameters for a trial."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import optuna

from shared.errors import ConfigError
from shared.training import HyperParams

BUILTIN_SPACES = ("reference", "small")
HYPERPARAMETERS = tuple(field.name for field in dataclasses.fields(HyperParams))
_INTEGER_PARAMS = {"embedding_dim", "d_model", "num_layers"}


def load_search_space(name_or_path: str | None) -> dict[str, Any]:
    """Load a built-in space by name, or a TOML file, and validate it.

    Returns a plain dict ``{"params": {...}, "baseline": {...} or None}`` that
    is stored with the experiment, so workers never read the file.
    """
    name_or_path = name_or_path or "reference"
    if name_or_path in BUILTIN_SPACES:
        source = f"built-in search space {name_or_path!r}"
        text = resources.files("shared.search_spaces").joinpath(f"{name_or_path}.toml").read_text()
    else:
        path = Path(name_or_path)
        source = f"search space file {path}"
        if not path.is_file():
            raise ConfigError(
                f"search space {name_or_path!r} is neither a built-in name "
                f"({', '.join(BUILTIN_SPACES)}) nor an existing file"
            )
        text = path.read_text()
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source} is not valid TOML: {error}") from error
    space = {"params": document.get("params", {}), "baseline": document.get("baseline")}
    validate_search_space(space, source)
    return space


def _check_distribution(name: str, spec: Any, source: str) -> None:
    where = f"{source}, [params.{name}]"
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: expected a table with a `type` key")
    kind = spec["type"]
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: `choices` must be a non-empty list")
    elif kind in ("int", "float"):
        low, high = spec.get("low"), spec.get("high")
        if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or low > high:
            raise ConfigError(f"{where}: needs numbers `low` <= `high`, got low={low!r} high={high!r}")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{where}: a log scale needs low > 0, got {low}")
    else:
        raise ConfigError(f"{where}: type {kind!r} is unknown; use categorical, int or float")
    values = spec["choices"] if kind == "categorical" else [spec["low"], spec["high"]]
    for value in values:
        _check_value(name, value, where)


def _check_value(name: str, value: Any, where: str) -> None:
    if name == "bidirectional":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: bidirectional must be true or false, got {value!r}")
    elif name in _INTEGER_PARAMS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}")
    elif name == "dropout":
        # Dropout with p = 1 zeroes every activation, so the model outputs a
        # constant and learns nothing; the space must stay below 1.
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ConfigError(f"{where}: dropout must be in [0, 1), got {value!r}")
    elif not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where}: {name} must be a positive number, got {value!r}")


def validate_search_space(space: dict[str, Any], source: str) -> None:
    params = space["params"]
    missing = [name for name in HYPERPARAMETERS if name not in params]
    unknown = [name for name in params if name not in HYPERPARAMETERS]
    if missing or unknown:
        raise ConfigError(
            f"{source}: missing hyperparameters {missing}, unknown {unknown}; "
            f"define exactly {list(HYPERPARAMETERS)}"
        )
    for name, spec in params.items():
        _check_distribution(name, spec, source)
    baseline = space["baseline"]
    if baseline is not None:
        if sorted(baseline) != sorted(HYPERPARAMETERS):
            raise ConfigError(f"{source}, [baseline]: must set exactly {list(HYPERPARAMETERS)}")
        for name, value in baseline.items():
            _check_value(name, value, f"{source}, [baseline]")
            if not _contains(params[name], value):
                raise ConfigError(f"{source}, [baseline]: {name} = {value!r} lies outside [params.{name}]")


def _contains(spec: dict[str, Any], value: Any) -> bool:
    if spec["type"] == "categorical":
        return value in spec["choices"]
    return spec["low"] <= value <= spec["high"]


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> HyperParams:
    """Sample one configuration from the space."""
    values: dict[str, Any] = {}
    for name, spec in space["params"].items():
        if spec["type"] == "categorical":
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["type"] == "int":
            values[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1))
        else:
            values[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
    return HyperParams(**values)
