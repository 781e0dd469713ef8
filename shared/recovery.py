"""Failing interrupted trials and enqueueing their retries.

Callers hold the experiment lock (shared.storage.experiment_lock), because a
failed trial frees a slot of the fold's budget and the retry must take that
slot before any worker counts the budget again.
"""

from __future__ import annotations

import logging

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

logger = logging.getLogger(__name__)


def enqueue_retry(study: optuna.Study, trial: FrozenTrial, reason: str, max_retries: int) -> bool:
    """Enqueue a new trial with the parameters of a failed one, unless it was retried `max_retries` times."""
    count = int(trial.user_attrs.get("retry_count", 0))
    origin = int(trial.user_attrs.get("retry_of", trial.number))
    if count >= max_retries:
        logger.warning(
            "%s trial %d (%s) failed after %d retries of trial %d; not retrying again",
            study.study_name, trial.number, reason, count, origin,
        )
        return False
    attrs = {"retry_of": origin, "retry_count": count + 1, "retry_reason": reason}
    if trial.user_attrs.get("baseline"):
        attrs["baseline"] = True
    # A trial popped from the queue and failed before sampling has no params
    # yet; its enqueued values are in the `fixed_params` system attribute.
    params = dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))
    study.enqueue_trial(params, user_attrs=attrs)
    logger.info("%s trial %d (%s): enqueued retry %d of trial %d", study.study_name, trial.number, reason, count + 1, origin)
    return True


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str, max_retries: int) -> bool:
    """Mark a RUNNING trial FAIL with the reason, then enqueue its retry.

    Returns False, and enqueues nothing, when another process has already
    finished the trial.
    """
    storage = study._storage  # Optuna's storage API is the only way to touch another process's trial.
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    enqueue_retry(study, trial, reason, max_retries)
    return True


def make_stale_trial_callback(max_retries: int):
    """Return the heartbeat-stale callback for RDBStorage, which enqueues the retry.

    Optuna has already marked the trial FAIL when it calls this, and attributes
    of finished trials are frozen, so the reason goes on the retry instead.
    """

    def on_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        enqueue_retry(study, trial, "heartbeat stale: its worker stopped responding", max_retries)

    return on_stale_trial
