"""Riding out database restarts and dropped connections.

`RetryingRDBStorage` is an Optuna RDBStorage whose storage calls retry with
backoff while the database is unreachable, so a PostgreSQL restart or a
killed server connection delays a worker instead of crashing it. It stays an
RDBStorage, so Optuna's own checks (heartbeats, caching) treat it as one.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, PendingRollbackError

from shared.errors import StorageError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The storage calls a worker or coordinator makes. Writes among them are
# either idempotent (attributes, parameters, intermediate values, heartbeats)
# or checked by the caller: a repeated state change raises
# UpdateFinishedTrialError, and a trial created twice by a repeated
# create_new_trial has no heartbeat and is swept as an orphan.
_RETRIED_METHODS = (
    "create_new_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies", "create_new_trial",
    "set_trial_param", "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "get_all_trials", "get_best_trial", "record_heartbeat", "_get_stale_trial_ids",
    # Optuna 5.1's _CachedStorage, which load_study wraps around an RDBStorage,
    # calls these private methods directly.
    "_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id",
)

DEFAULT_OUTAGE_TIMEOUT_S = 600.0


def is_connection_error(error: BaseException) -> bool:
    """Return True for errors caused by a lost or refused database connection."""
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
        return is_connection_error(error.__cause__)
    if isinstance(error, (OperationalError, InterfaceError)):
        return True
    if isinstance(error, PendingRollbackError):
        # A session whose connection broke mid-transaction; a fresh session works.
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def retry_on_disconnect(
    operation: Callable[[], T],
    label: str,
    timeout_s: float = DEFAULT_OUTAGE_TIMEOUT_S,
    before_retry: Callable[[], None] | None = None,
) -> T:
    """Run `operation`, retrying with exponential backoff (0.5 s to 10 s) while the database is unreachable."""
    deadline = time.monotonic() + timeout_s
    delay, attempt = 0.5, 0
    while True:
        try:
            result = operation()
        except Exception as error:
            if not is_connection_error(error):
                raise
            attempt += 1
            if time.monotonic() + delay > deadline:
                raise StorageError(
                    f"{label}: database unreachable for {timeout_s:.0f} s ({_reason(error)}): "
                    "check the server and the network"
                ) from None
            log = logger.warning if attempt == 1 else logger.debug
            log("%s: database unreachable (%s); retry %d in %.1f s", label, _reason(error), attempt, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            if before_retry is not None:
                before_retry()
            continue
        if attempt:
            logger.info("%s: database reachable again after %d retries", label, attempt)
        return result


def _reason(error: BaseException) -> str:
    cause = error.__cause__ if isinstance(error, optuna.exceptions.StorageInternalError) else error
    original = getattr(cause, "orig", None) or cause
    text = str(original).strip().splitlines()
    return text[0] if text else type(original).__name__


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def wrapper(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return retry_on_disconnect(
            lambda: method(self, *args, **kwargs), f"storage.{name}", self.outage_timeout_s,
            # Drop this thread's session, which may still hold the broken connection.
            before_retry=self.remove_session,
        )

    return wrapper


class RetryingRDBStorage(RDBStorage):
    outage_timeout_s: float = DEFAULT_OUTAGE_TIMEOUT_S


for _name in _RETRIED_METHODS:
    setattr(RetryingRDBStorage, _name, _retrying(_name))
