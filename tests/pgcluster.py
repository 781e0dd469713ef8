"""A private, throwaway PostgreSQL server for tests that restart or disrupt the database.

The shared server on 127.0.0.1:5432 must never be restarted by a test, so chaos
tests run `initdb` into a temporary folder and start their own `postgres` on a
free port with trust authentication. `initdb` and `postgres` reject running as
root, so as root they run as the `postgres` OS user through `runuser`.

    with PgCluster() as cluster:
        url = cluster.create_database("chaos")
        cluster.terminate_backends("chaos")
        cluster.restart()
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg2

PG_BIN_ENV = "HPO_PG_BIN"
OS_USER = "postgres"
DATABASE_USER = "postgres"


class PgClusterError(RuntimeError):
    """The private PostgreSQL server could not be set up, started or stopped."""


def find_pg_bin() -> Path:
    """Return the folder of `initdb` and `pg_ctl`: $HPO_PG_BIN, the newest /usr/lib/postgresql/*/bin, or $PATH."""
    configured = os.environ.get(PG_BIN_ENV)
    if configured:
        candidates = [Path(configured)]
    else:
        versioned = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                           if Path(p).parent.name.isdigit() else 0)
        candidates = [Path(p) for p in reversed(versioned)]
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    searched = ", ".join(str(c) for c in candidates) or "no candidate folder"
    raise PgClusterError(
        f"PostgreSQL server binaries (initdb, pg_ctl) not found (searched {searched}): install the "
        f"PostgreSQL server package or set {PG_BIN_ENV} to the folder that contains them"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that nothing listens on right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class PgCluster:
    """A PostgreSQL server of its own, in a temporary folder, removed again by `stop()`.

    `listen_addresses` are the IPv4 addresses the server binds, and `trusted_networks`
    the CIDR ranges whose clients connect without a password. Both default to loopback.
    An address other than 127.0.0.1 must exist on an interface before `start()`.
    `settings` are extra postgresql.conf parameters, such as {"tcp_keepalives_idle": "5"}.
    """

    def __init__(
        self,
        listen_addresses: Sequence[str] = ("127.0.0.1",),
        trusted_networks: Sequence[str] = ("127.0.0.1/32",),
        port: int | None = None,
        start_timeout_s: int = 60,
        settings: dict[str, str] | None = None,
    ):
        self.bin = find_pg_bin()
        self.listen_addresses = list(listen_addresses)
        self.trusted_networks = list(trusted_networks)
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.extra_settings = dict(settings or {})
        self.base: Path | None = None
        self.running = False

    @property
    def host(self) -> str:
        return self.listen_addresses[0]

    @property
    def data_dir(self) -> Path:
        assert self.base is not None, "start() first"
        return self.base / "data"

    @property
    def log_path(self) -> Path:
        assert self.base is not None, "start() first"
        return self.base / "server.log"

    def url(self, database: str, host: str | None = None) -> str:
        """Return the SQLAlchemy URL of a database on this server, through `host` if given."""
        return f"postgresql+psycopg2://{DATABASE_USER}@{host or self.host}:{self.port}/{database}"

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> PgCluster:
        """Create the data folder on the first call, then start the server and wait until it accepts connections."""
        if self.base is None:
            self._init()
        self._pg_ctl("start", "-w", "-t", str(self.start_timeout_s), "-l", str(self.log_path))
        self.running = True
        return self

    def restart(self, down_s: float = 0.0) -> float:
        """Restart the server with a fast shutdown, which disconnects every client.

        With `down_s` > 0 the server stays stopped that many seconds before it starts
        again, so clients see refused connections and not only dropped ones.
        Returns the seconds from the stop request until the server accepts connections.
        """
        started = time.monotonic()
        if down_s <= 0:
            self._pg_ctl("restart", "-m", "fast", "-w", "-t", str(self.start_timeout_s), "-l", str(self.log_path))
        else:
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(self.start_timeout_s))
            time.sleep(down_s)
            self._pg_ctl("start", "-w", "-t", str(self.start_timeout_s), "-l", str(self.log_path))
        return time.monotonic() - started

    def stop(self) -> None:
        """Stop the server if it runs and delete its folder. Safe to call more than once."""
        try:
            if self.running:
                self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30")
                self.running = False
        finally:
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None

    def __enter__(self) -> PgCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- SQL -----------------------------------------------------------------------

    def connect(self, database: str = "postgres"):
        """Return an autocommit psycopg2 connection to a database of this server."""
        connection = psycopg2.connect(host=self.host, port=self.port, user=DATABASE_USER,
                                      dbname=database, connect_timeout=5)
        connection.autocommit = True
        return connection

    def create_database(self, name: str) -> str:
        """Create a database and return its SQLAlchemy URL."""
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def terminate_backends(self, database: str) -> int:
        """Kill every client connection to `database` with pg_terminate_backend and return how many were killed."""
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                    (database,),
                )
                return int(cursor.fetchone()[0])
        finally:
            connection.close()

    # -- helpers -------------------------------------------------------------------

    def _init(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="hpo-pgcluster-"))
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(OS_USER)
            except KeyError:
                raise PgClusterError(
                    f"running as root, but there is no {OS_USER!r} OS user to run initdb and postgres as: "
                    "create that user or run the tests as a non-root user"
                ) from None
            os.chown(self.base, account.pw_uid, account.pw_gid)
        if self.port is None:
            self.port = free_port()
        self._run_as_owner([str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", DATABASE_USER,
                            "--auth=trust", "-E", "UTF8", "--no-sync"])
        settings = {
            "listen_addresses": f"'{','.join(self.listen_addresses)}'",
            "port": str(self.port),
            # The socket goes into the private folder, because the default
            # (/var/run/postgresql) belongs to the system server.
            "unix_socket_directories": f"'{self.base}'",
            "max_connections": "200",
            # Skipping fsync makes commits and restarts fast, and a throwaway database loses nothing by it.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            **self.extra_settings,
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# Settings of the private test server (tests/pgcluster.py)\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")
        hba_lines = ["local all all trust"] + [f"host all all {network} trust" for network in self.trusted_networks]
        (self.data_dir / "pg_hba.conf").write_text("\n".join(hba_lines) + "\n")

    def _pg_ctl(self, *args: str) -> None:
        self._run_as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data_dir), *args])

    def _run_as_owner(self, command: list[str]) -> None:
        # NOTE: only the root path (runuser) has been run; the non-root path runs
        # initdb and pg_ctl as the current user and is untested.
        if os.geteuid() == 0:
            command = ["runuser", "-u", OS_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.base, timeout=120)
        if result.returncode != 0:
            log_tail = ""
            if self.base is not None and self.log_path.is_file():
                log_tail = "\nserver log (last lines):\n" + "\n".join(self.log_path.read_text().splitlines()[-20:])
            raise PgClusterError(
                f"{' '.join(command)} failed with exit status {result.returncode}:\n"
                f"{result.stdout}{result.stderr}{log_tail}"
            )
