"""Status and cross-validation report of an experiment."""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from shared.experiment import ExperimentRecord


def fold_status(study: optuna.Study, budget: int) -> dict[str, Any]:
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] += 1
    finished = counts["complete"] + counts["pruned"]
    return {"budget": budget, "finished": finished, "done": finished >= budget, **counts}


def _best_trial(study: optuna.Study) -> dict[str, Any] | None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        return None
    best = max(complete, key=lambda t: (t.value, -t.number))
    return {
        "trial": best.number,
        "dev_auc": best.value,
        "held_out_auc": best.user_attrs.get("held_out_auc"),
        "best_epoch": best.user_attrs.get("best_epoch"),
        "seed": best.user_attrs.get("seed"),
        "worker_id": best.user_attrs.get("worker_id"),
        "params": best.params,
    }


def _mean_std(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def build_report(storage: BaseStorage, record: ExperimentRecord) -> dict[str, Any]:
    """Collect per-fold status and best trials, and the summary over folds.

    The best trial of a fold is chosen by dev AUC only; its held-out AUC is the
    honest estimate. The optimism gap is mean best dev AUC minus mean held-out
    AUC: how much model selection flatters the search's own objective.
    """
    folds = []
    for fold in record.folds:
        study = optuna.load_study(study_name=fold.study_name, storage=storage)
        folds.append({
            "fold": fold.fold,
            "study": fold.study_name,
            "status": fold_status(study, record.settings.trials_per_fold),
            "best": _best_trial(study),
        })
    bests = [f["best"] for f in folds if f["best"] and f["best"]["held_out_auc"] is not None]
    held_out = _mean_std([b["held_out_auc"] for b in bests])
    dev = _mean_std([b["dev_auc"] for b in bests])
    gap = dev["mean"] - held_out["mean"] if bests else None
    return {
        "experiment": record.name,
        "dataset": record.settings.dataset,
        "dataset_fingerprint": record.fingerprint,
        "n_molecules": record.n_molecules,
        "split": record.settings.split,
        "n_folds": record.settings.n_folds,
        "trials_per_fold": record.settings.trials_per_fold,
        "complete": all(f["status"]["done"] for f in folds),
        "folds": folds,
        "held_out_auc": held_out,
        "dev_auc": dev,
        "optimism_gap": gap,
        "std_note": "std is the sample standard deviation over folds (ddof=1)",
    }


def _format(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def format_status(report: dict[str, Any]) -> str:
    lines = [f"experiment {report['experiment']}: {report['n_folds']} folds, {report['trials_per_fold']} trials per fold"]
    for fold in report["folds"]:
        s = fold["status"]
        lines.append(
            f"  {fold['study']}: finished {s['finished']}/{s['budget']} "
            f"(complete {s['complete']}, pruned {s['pruned']}, failed {s['fail']}, "
            f"running {s['running']}, waiting {s['waiting']})"
        )
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"cross-validation report: {report['experiment']} ({report['dataset']['name']}, "
        f"{report['n_molecules']} molecules, {report['split']} {report['n_folds']}-fold)",
        "  fold  trial  dev AUC  held-out AUC  params",
    ]
    for fold in report["folds"]:
        best = fold["best"]
        if best is None:
            lines.append(f"  {fold['fold']:>4}  (no complete trial yet)")
            continue
        params = ", ".join(f"{k}={_short(v)}" for k, v in best["params"].items())
        lines.append(
            f"  {fold['fold']:>4}  {best['trial']:>5}  {_format(best['dev_auc']):>7}  "
            f"{_format(best['held_out_auc']):>12}  {params}"
        )
    held_out, dev = report["held_out_auc"], report["dev_auc"]
    lines.append(
        f"  held-out ROC-AUC over {held_out['n']} folds: {_format(held_out['mean'])} ± {_format(held_out['std'])} "
        f"(dev {_format(dev['mean'])}; optimism gap {_format(report['optimism_gap'])})"
    )
    if not report["complete"]:
        lines.append("  NOTE: some folds have not finished their budget; this report is provisional")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write the report atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(report, out, indent=2)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
