"""Heartbeats that keep a running trial alive in storages that support them."""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger(__name__)


def heartbeat_interval(storage: BaseStorage) -> int | None:
    if isinstance(storage, BaseHeartbeat):
        return storage.get_heartbeat_interval()
    return None


@contextlib.contextmanager
def keep_alive(storage: BaseStorage, trial_id: int, label: str) -> Iterator[None]:
    """Record heartbeats for the trial from a background thread while the block runs.

    Storages without heartbeats (the journal file) get a context that does
    nothing, so the trial loop need not check which storage it has.
    """
    interval = heartbeat_interval(storage)
    if interval is None:
        yield
        return
    assert isinstance(storage, BaseHeartbeat)
    stop = threading.Event()

    def beat() -> None:
        failures = 0
        while not stop.is_set():
            try:
                storage.record_heartbeat(trial_id)
                if failures:
                    logger.info("%s: heartbeat recorded again after %d failures", label, failures)
                failures = 0
            except SQLAlchemyError as error:
                failures += 1
                # Only the first failure in a row is logged at WARNING, so an
                # outage does not flood the log.
                log = logger.warning if failures == 1 else logger.debug
                log("%s: heartbeat failed (%s); retrying in %d s", label, type(error).__name__, interval)
            stop.wait(interval)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        # The thread may be inside a retried database call; it is a daemon,
        # so a stopping worker does not wait for it.
        thread.join(timeout=1)


def sweep_stale_trials(study: optuna.Study) -> None:
    """Fail the study's trials whose heartbeat is older than the grace period (RDB storages only)."""
    with warnings.catch_warnings():
        # fail_stale_trials is marked experimental in Optuna 5.1 but has kept
        # its interface since 2.9; the warning would repeat on every sweep.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
