"""Start optuna-dashboard on the storage in HPO_STORAGE once Optuna's tables exist.

optuna-dashboard 0.21 opens an RDB storage without creating tables and exits with
StorageInternalError on a database that has none, so a dashboard started before the
coordinator would crash-loop. This wrapper waits for the tables first. It also keeps the
storage URL, which contains the database password, off the process command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import optuna
import optuna_dashboard
import sqlalchemy
from sqlalchemy.engine import make_url

logger = logging.getLogger("hpo.dashboard")

# Tables that Optuna's RDBStorage creates together with the first study.
REQUIRED_TABLES = ("alembic_version", "studies", "trials")
# One log line per this many failed checks, so a long wait does not flood the log.
LOG_EVERY_N_CHECKS = 12


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port to listen on (default: %(default)s)")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=5.0,
        help="seconds between checks for Optuna's tables (default: %(default)s)",
    )
    return parser.parse_args()


def find_missing_tables(engine: sqlalchemy.Engine) -> list[str]:
    inspector = sqlalchemy.inspect(engine)
    return [table for table in REQUIRED_TABLES if not inspector.has_table(table)]


def wait_for_tables(url: str, poll_interval: float) -> None:
    """Block until the database accepts connections and contains Optuna's tables."""
    engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
    masked_url = make_url(url).render_as_string(hide_password=True)
    checks = 0
    try:
        while True:
            try:
                missing = find_missing_tables(engine)
                reason = f"tables {', '.join(missing)} do not exist yet" if missing else ""
            except sqlalchemy.exc.OperationalError as error:
                missing = list(REQUIRED_TABLES)
                reason = f"database not reachable: {str(error.orig).strip()}"
            if not missing:
                logger.info("Optuna's tables exist in %s", masked_url)
                return
            if checks % LOG_EVERY_N_CHECKS == 0:
                logger.info(
                    "Waiting for the coordinator to create the experiment in %s (%s); "
                    "checking every %.0f s",
                    masked_url, reason, poll_interval,
                )
            checks += 1
            time.sleep(poll_interval)
    finally:
        engine.dispose()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    url = os.environ.get("HPO_STORAGE", "").strip()
    if not url:
        logger.error("HPO_STORAGE is not set: set it to the SQLAlchemy URL of the study database")
        return 2

    wait_for_tables(url, args.poll_interval)
    # pool_pre_ping replaces connections that PostgreSQL or a firewall closed while idle.
    storage = optuna.storages.RDBStorage(
        url,
        engine_kwargs={"pool_pre_ping": True},
        skip_compatibility_check=True,
        skip_table_creation=True,
    )
    logger.info("Starting optuna-dashboard %s on %s:%d", optuna_dashboard.__version__, args.host, args.port)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
