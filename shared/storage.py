"""The one place that turns a storage setting into an Optuna storage.

Two backends are supported:

* PostgreSQL (``postgresql+psycopg2://user:password@host:5432/db``), for workers
  on several machines. It has heartbeats for stale-trial recovery.
* An Optuna journal file (any value without ``://``, a file path), the embedded
  default. Its appends are serialized by a lock file, so several worker
  processes on one machine can share it. SQLite is rejected because concurrent
  writers hit "database is locked".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, ProgrammingError, SQLAlchemyError

from shared.errors import ConfigError, StorageError
from shared.resilience import RetryingRDBStorage

logger = logging.getLogger(__name__)

STORAGE_ENV = "HPO_STORAGE"
DEFAULT_CONNECT_TIMEOUT_S = 120.0
# Parts of PostgreSQL's login errors that retrying cannot fix.
_PERMANENT_CONNECT_ERRORS = ("does not exist", "authentication failed", "no pg_hba.conf entry")


def mask_url(storage: str) -> str:
    """Return the storage setting with any password replaced by ***."""
    if "://" not in storage:
        return storage
    try:
        return make_url(storage).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not parseable as a URL: hide everything between "//" and "@" instead.
        return re.sub(r"//[^@/]*@", "//***@", storage)


def resolve_storage_setting(flag_value: str | None) -> str:
    """Return the storage from the flag, else from $HPO_STORAGE, else fail."""
    value = flag_value or os.environ.get(STORAGE_ENV)
    if not value:
        raise ConfigError(
            f"no storage given: pass --storage or set {STORAGE_ENV} to a "
            "postgresql+psycopg2:// URL or a journal file path"
        )
    return value


def is_journal(storage: str) -> bool:
    return "://" not in storage


def _check_rdb_url(storage: str) -> None:
    try:
        url = make_url(storage)
    except (ArgumentError, ValueError) as error:
        raise ConfigError(
            f"storage URL {mask_url(storage)} is invalid ({error}): expected "
            "postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    if url.get_backend_name() == "sqlite":
        raise ConfigError(
            f"storage {mask_url(storage)}: SQLite locks under concurrent workers; use a journal "
            "file path for one machine or a postgresql+psycopg2:// URL for several"
        )
    if url.get_backend_name() != "postgresql":
        raise ConfigError(
            f"storage {mask_url(storage)}: only PostgreSQL URLs and journal file paths are supported"
        )


def open_storage(
    storage: str,
    *,
    create_schema: bool,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    application_name: str = "smiles-hpo",
) -> BaseStorage:
    """Open the storage, retrying with backoff while a database server is unreachable.

    Workers pass ``create_schema=False``: only the coordinator creates tables,
    because concurrent schema creation on an empty database races. Each
    storage holds at most 4 connections (pool of 2 plus 2 overflow).
    """
    if is_journal(storage):
        path = Path(storage)
        if create_schema:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.is_file():
            raise StorageError(f"journal file {path} not found: create the experiment first")
        return JournalStorage(JournalFileBackend(str(path)))

    _check_rdb_url(storage)
    engine_kwargs = {
        # PostgreSQL drops idle connections during long trials, and restarts drop
        # all of them: test each connection before use and renew it regularly.
        "pool_pre_ping": True,
        "pool_recycle": 300,
        "pool_size": 2,
        "max_overflow": 2,
        # PostgreSQL limits application_name to 63 bytes; it names the process
        # in pg_stat_activity.
        "connect_args": {
            "connect_timeout": 10,
            "application_name": application_name[:63],
            # Keepalives and a TCP user timeout on both ends: a worker cut off by
            # the network loses its session, and with it any advisory lock,
            # within about 30 s instead of the kernel's default of over 15 min.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": 30000,
            # libpq ignores $PGOPTIONS when `options` is given, so it is appended:
            # for a repeated -c setting the last one wins, and the user's do.
            "options": " ".join([
                "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5",
                "-c tcp_keepalives_count=3 -c tcp_user_timeout=30000",
                os.environ.get("PGOPTIONS", ""),
            ]).strip(),
        },
    }
    deadline = time.monotonic() + connect_timeout_s
    delay = 1.0
    while True:
        try:
            if not create_schema:
                return _rdb_storage(storage, engine_kwargs, False, heartbeat_interval, grace_period, stale_trial_callback)
            with _schema_lock(storage):
                return _rdb_storage(storage, engine_kwargs, True, heartbeat_interval, grace_period, stale_trial_callback)
        except OperationalError as error:
            remaining = deadline - time.monotonic()
            reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            if any(marker in reason for marker in _PERMANENT_CONNECT_ERRORS):
                # The server rejected the login, so waiting cannot fix it.
                raise StorageError(f"database {mask_url(storage)} rejected the connection ({reason}): "
                                   "check the user, password and database name in the URL") from None
            if remaining <= 0:
                raise StorageError(
                    f"database {mask_url(storage)} not reachable after {connect_timeout_s:.0f} s "
                    f"({reason}): check that the server runs and the URL is right"
                ) from None
            logger.warning("database %s not reachable (%s); retrying in %.0f s", mask_url(storage), reason, delay)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 15.0)
        except RuntimeError as error:
            # Optuna raises RuntimeError for a schema version mismatch, naming
            # `optuna storage upgrade`; workers must not upgrade it themselves.
            raise StorageError(f"storage {mask_url(storage)}: {error}") from None
        except SQLAlchemyError as error:
            raise StorageError(f"storage {mask_url(storage)} failed to open: {type(error).__name__}") from None


def _rdb_storage(storage, engine_kwargs, create_schema, heartbeat_interval, grace_period, stale_trial_callback):
    """Build the RDBStorage, unwrapping Optuna's wrapper around connection errors."""
    with warnings.catch_warnings():
        # Heartbeat arguments are marked experimental in Optuna 5.1; they have
        # been stable since 2.9, and the warning would repeat in every process.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return RetryingRDBStorage(
                storage,
                engine_kwargs=engine_kwargs,
                skip_table_creation=not create_schema,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=stale_trial_callback,
            )
        except optuna.exceptions.StorageInternalError as error:
            if isinstance(error.__cause__, OperationalError):
                raise error.__cause__ from None
            if isinstance(error.__cause__, ProgrammingError) and not create_schema:
                raise StorageError(
                    f"database {mask_url(storage)} has no Optuna tables: create the experiment "
                    "with `hpo-coordinator create` first"
                ) from None
            raise


@contextlib.contextmanager
def _schema_lock(storage: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock while Optuna creates its tables.

    Optuna's table creation is not safe when several processes run it at once
    on an empty database (duplicate-key errors), so coordinators take turns.
    """
    engine = sqlalchemy.create_engine(storage, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _lock_key("#schema")})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _lock_key("#schema")})
                connection.commit()
    finally:
        engine.dispose()


def _lock_key(experiment: str) -> int:
    digest = hashlib.sha256(f"smiles-hpo:{experiment}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass
class LockState:
    """Whether an experiment lock was lost while its block ran."""

    lost: bool = False


@contextlib.contextmanager
def experiment_lock(storage_setting: str, storage: BaseStorage, experiment: str) -> Iterator[LockState]:
    """Serialize budget checks and trial creation of one experiment across all processes.

    Journal files use an flock on a file beside the journal, PostgreSQL a
    session advisory lock. Both are released when the holder dies. If the
    server drops the lock's connection while the block runs, the lock is gone
    and another process may have counted the budget at the same time. The
    yielded state then reads ``lost`` after the block, so the caller can check
    its work again.
    """
    state = LockState()
    if is_journal(storage_setting):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
        lock_path = Path(f"{storage_setting}.{safe}.lock")
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield state
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return

    assert isinstance(storage, RDBStorage)
    key = _lock_key(experiment)
    with storage.engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield state
        finally:
            try:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
            except SQLAlchemyError as error:
                # A lost connection has released the lock on the server already.
                state.lost = True
                logger.warning("advisory lock of experiment %s was lost while held (%s)", experiment,
                               type(error).__name__)
                connection.invalidate()
