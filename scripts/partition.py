"""Network partition: cut one worker off the database, then reconnect it.

The script needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for `ip netns` and veth
links), so it is a manual check and not a CI test. Everything stays on this
machine:

* a network namespace with one end of a veth pair (10.231.0.2/30 by default),
  whose other end stays on the host (10.231.0.1/30);
* a private PostgreSQL server (tests/pgcluster.py) that listens on 127.0.0.1
  and on the host end of the veth pair;
* two workers on the host that reach the server through 127.0.0.1, and one
  worker inside the namespace that reaches it only through the veth pair.

With `--moment trial` (the default) the script sets the host end of the link
down once the namespaced worker has a RUNNING trial. It checks that another
worker fails the trial as stale after the grace period and enqueues its retry,
restores the link, and checks that the cut-off worker logs that its late result
was discarded and keeps working.

With `--moment claim` it cuts the link while the namespaced worker holds the
experiment's advisory lock, keeps it down for `--hold` seconds (default 60), and
checks whether the other workers start trials meanwhile. Worker connections set
TCP keepalives and tcp_user_timeout = 30000 ms on both ends (shared/storage.py),
so the server should drop the silent client, and with it the lock, about 30 s
after the cut. `--dead-client-timeout` writes shorter values of these parameters
into postgresql.conf, but each worker session sets its own values at connect
time, which take precedence, so the option does not shorten the stall.

Either way every fold must end with exactly its budget of finished trials.

    sudo /work/venv/bin/python scripts/partition.py
    sudo /work/venv/bin/python scripts/partition.py --moment claim

Exit status: 0 when every check passed, 1 when one failed, 2 when the setup failed.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    # Run as `python scripts/partition.py`, the script needs the repository root
    # on the path to import tests.pgcluster and scripts.chaos_run.
    sys.path.insert(0, str(REPO_ROOT))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from scripts.chaos_run import REFERENCE_BBBP, TrialMonitor, experiment_flags, write_extract  # noqa: E402
from shared.storage import open_storage  # noqa: E402
from tests.pgcluster import PgCluster, PgClusterError  # noqa: E402

LATE_RESULT_MESSAGE = "discarding its late result"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SetupError(RuntimeError):
    """The namespace, the link or the server could not be set up."""


def ip(*args: str, namespace: str | None = None) -> None:
    """Run an `ip` command, in a network namespace if given, and raise SetupError when it fails."""
    command = ["ip", *args] if namespace is None else ["ip", "netns", "exec", namespace, "ip", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise SetupError(f"{' '.join(command)} failed: {result.stderr.strip()}")


class VethNamespace:
    """A network namespace linked to the host by a veth pair with a /30 subnet; removed on exit."""

    def __init__(self, subnet: str):
        network = ipaddress.ip_network(subnet)
        if network.prefixlen != 30:
            raise SetupError(f"--subnet {subnet} is invalid: give a /30 network, such as 10.231.0.0/30")
        self.host_address, self.namespace_address = (str(a) for a in network.hosts())
        self.network = network
        suffix = os.getpid() % 100000
        self.namespace = f"hpo-partition-{suffix}"
        self.host_link = f"hpoh{suffix}"
        self.namespace_link = f"hpon{suffix}"
        self.created_namespace = False
        self.created_link = False

    def __enter__(self) -> VethNamespace:
        in_use = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
        for match in re.finditer(r"inet (\S+)", in_use):
            if ipaddress.ip_interface(match.group(1)).network.overlaps(self.network):
                raise SetupError(f"subnet {self.network} overlaps {match.group(1)}, which is in use: pass another --subnet")
        try:
            ip("netns", "add", self.namespace)
            self.created_namespace = True
            ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.namespace_link)
            self.created_link = True
            ip("link", "set", self.namespace_link, "netns", self.namespace)
            ip("addr", "add", f"{self.host_address}/30", "dev", self.host_link)
            ip("link", "set", self.host_link, "up")
            ip("addr", "add", f"{self.namespace_address}/30", "dev", self.namespace_link, namespace=self.namespace)
            ip("link", "set", self.namespace_link, "up", namespace=self.namespace)
            ip("link", "set", "lo", "up", namespace=self.namespace)
        except BaseException:
            self.__exit__()
            raise
        return self

    def cut(self) -> None:
        ip("link", "set", self.host_link, "down")

    def restore(self) -> None:
        ip("link", "set", self.host_link, "up")

    def __exit__(self, *exc_info: object) -> None:
        # Deleting one end of a veth pair deletes both, and deleting the namespace
        # deletes the end inside it.
        if self.created_link:
            subprocess.run(["ip", "link", "del", self.host_link], capture_output=True)
        if self.created_namespace:
            subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)


def worker_command(storage_url: str, experiment: str, worker_id: str, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "worker", "--storage", storage_url, "--experiment", experiment,
        "--worker-id", worker_id, "--threads", "1", "--poll-interval", "0.5",
        "--heartbeat-interval", str(args.heartbeat_interval), "--grace-period", str(args.grace_period),
    ]


def wait_until(probe, timeout_s: float, step_s: float = 0.1):
    """Return the first truthy value of `probe()`, or None after `timeout_s` seconds."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = probe()
        if value:
            return value
        time.sleep(step_s)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--subnet", default="10.231.0.0/30", help="/30 network of the veth pair (default 10.231.0.0/30)")
    add("--folds", type=int, default=2, help="folds of the experiment (default 2)")
    add("--trials-per-fold", type=int, default=8, help="budget per fold (default 8)")
    add("--max-epochs", type=int, default=6, help="epochs per trial, so that a trial outlasts the cut (default 6)")
    add("--heartbeat-interval", type=int, default=1, help="worker heartbeat interval in seconds (default 1)")
    add("--grace-period", type=int, default=4, help="worker grace period in seconds (default 4)")
    add("--moment", choices=("trial", "claim"), default="trial",
        help="cut while the namespaced worker trains (trial, default) or while it holds the experiment lock (claim)")
    add("--hold", type=float, default=None,
        help="seconds the link stays down, counted after the trial was failed with --moment trial (default 1) "
             "and from the cut with --moment claim (default 60, longer than the 30 s TCP user timeout "
             "of worker connections)")
    add("--dead-client-timeout", type=int, default=0,
        help="write tcp_keepalives_idle (this many seconds), tcp_keepalives_interval (1 s), "
             "tcp_keepalives_count (3) and tcp_user_timeout (this many seconds) into the server's "
             "postgresql.conf; 0, the default, writes nothing. Worker sessions set their own values at "
             "connect time, which take precedence")
    add("--seed", type=int, default=3, help="seed of the moment of the cut within the trial (default 3)")
    add("--data", type=Path, default=REFERENCE_BBBP, help=f"BBBP CSV file (default {REFERENCE_BBBP})")
    add("--rows", type=int, default=240, help="data rows of the BBBP file to use (default 240)")
    add("--timeout", type=float, default=600, help="seconds for the whole run (default 600)")
    add("--workdir", type=Path, default=None, help="folder for worker logs (default: a new temporary folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.hold is None:
        args.hold = 1.0 if args.moment == "trial" else 60.0
    if os.geteuid() != 0:
        print("error: this script needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create a network namespace "
              "and a veth pair: run it with sudo", file=sys.stderr)
        return 2
    if shutil.which("ip") is None:
        print("error: the `ip` command (iproute2) is not installed", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hpo-partition-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = write_extract(args.data, args.rows, workdir / "bbbp-extract.csv")
    print(f"worker logs in {workdir}", flush=True)
    try:
        with VethNamespace(args.subnet) as link:
            trusted = ["127.0.0.1/32", f"{link.namespace_address}/32"]
            settings = {}
            if args.dead_client_timeout:
                # Keepalives detect a silent client on an idle connection, and
                # tcp_user_timeout one that leaves sent data unacknowledged (a reply
                # sent just before the cut). Either way the server closes the
                # connection and frees the session's advisory locks. Worker
                # sessions override these with their own values at connect time,
                # so they apply only to connections that set none, such as the
                # monitor connection of this script.
                seconds = args.dead_client_timeout
                settings = {"tcp_keepalives_idle": str(seconds), "tcp_keepalives_interval": "1",
                            "tcp_keepalives_count": "3", "tcp_user_timeout": str(seconds * 1000)}
            with PgCluster(listen_addresses=["127.0.0.1", link.host_address], trusted_networks=trusted,
                           settings=settings) as cluster:
                return Partition(args, link, cluster, data, workdir).run()
    except (SetupError, PgClusterError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


ADVISORY_LOCKS_OF_CLIENT = (
    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND a.client_addr = %s::inet"
)


class Partition:
    """One partition run: the experiment, three workers, the cut, and the checks."""

    def __init__(self, args: argparse.Namespace, link: VethNamespace, cluster: PgCluster, data: Path, workdir: Path):
        self.args, self.link, self.cluster, self.workdir = args, link, cluster, workdir
        self.rng = random.Random(args.seed)
        self.experiment = self.database = "partition"
        self.data = data
        self.studies = [f"{self.experiment}-fold{k}" for k in range(args.folds)]
        self.checks: list[tuple[str, bool, str]] = []
        self.logs: dict[str, Path] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.cut_trial: tuple[str, int] | None = None

    def check(self, description: str, passed: bool, detail: str = "") -> None:
        self.checks.append((description, passed, detail))

    def run(self) -> int:
        self.cluster.create_database(self.database)
        local_url = self.cluster.url(self.database)
        remote_url = self.cluster.url(self.database, host=self.link.host_address)
        create = subprocess.run(
            [sys.executable, "-m", "coordinator", "create",
             *experiment_flags(local_url, self.experiment, self.data, self.args.folds, self.args.trials_per_fold,
                               self.args.max_epochs, 3)],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
        if create.returncode != 0:
            raise SetupError(f"hpo-coordinator create failed:\n{create.stderr}")
        self.monitor = TrialMonitor(self.cluster, self.database, self.studies)

        namespace_prefix = ["ip", "netns", "exec", self.link.namespace]
        for worker_id, prefix, url in [("cut", namespace_prefix, remote_url),
                                       ("host1", [], local_url), ("host2", [], local_url)]:
            self.logs[worker_id] = self.workdir / f"{worker_id}.log"
            with self.logs[worker_id].open("w") as log_file:
                self.processes[worker_id] = subprocess.Popen(
                    [*prefix, *worker_command(url, self.experiment, worker_id, self.args)], cwd=REPO_ROOT,
                    stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + self.args.timeout
        try:
            if self.args.moment == "trial":
                self.cut_during_trial()
            else:
                self.cut_during_claim()
            for worker_id, process in self.processes.items():
                try:
                    process.wait(timeout=max(deadline - time.monotonic(), 1))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                self.check(f"worker {worker_id} exited with status 0", process.returncode == 0,
                           f"status {process.returncode}")
        finally:
            for process in self.processes.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
            self.monitor.close()

        self.check_trials(local_url)
        return self.report()

    # -- cut mid-trial -------------------------------------------------------------

    def cut_during_trial(self) -> None:
        """Cut the link while the namespaced worker trains, then check for a stale failure, a retry and a discarded late result."""
        running = wait_until(lambda: (self.monitor.running_by_worker() or {}).get("cut"), timeout_s=120)
        if running is None:
            raise SetupError(f"the namespaced worker started no trial within 120 s; see {self.logs['cut']}")
        study, number = running
        time.sleep(self.rng.uniform(0.2, 1.0))
        if (self.monitor.running_by_worker() or {}).get("cut") != running:
            raise SetupError(f"{study} trial {number} of the namespaced worker ended before the cut; rerun "
                             "with more --max-epochs")
        self.link.cut()
        cut_clock = time.monotonic()
        self.cut_trial = running
        print(f"{datetime.now():%H:%M:%S} link down while worker cut runs {study} trial {number}", flush=True)

        failed = wait_until(lambda: self.trial_state(study, number) == "FAIL", timeout_s=120)
        failed_after = time.monotonic() - cut_clock
        self.check("another worker failed the cut-off trial", bool(failed),
                   f"{study} trial {number} state {self.trial_state(study, number)} {failed_after:.1f} s after the cut")
        self.check("the trial was failed no earlier than the grace period allows",
                   failed_after >= self.args.grace_period - self.args.heartbeat_interval,
                   f"{failed_after:.1f} s after the cut; grace period {self.args.grace_period} s, "
                   f"heartbeat interval {self.args.heartbeat_interval} s")
        # The link stays down a little longer, so the retry is claimed while the worker is still cut off.
        time.sleep(self.args.hold)
        self.link.restore()
        restored_clock = time.monotonic()
        print(f"{datetime.now():%H:%M:%S} link up after {restored_clock - cut_clock:.1f} s", flush=True)

        late = wait_until(lambda: LATE_RESULT_MESSAGE in self.logs["cut"].read_text(), timeout_s=180, step_s=0.2)
        self.check("the cut-off worker discarded its late result", bool(late),
                   f"{time.monotonic() - restored_clock:.1f} s after the link came back")

    def trial_state(self, study: str, number: int) -> str | None:
        rows = self.monitor.rows() or []
        return next((row.state for row in rows if row.study == study and row.number == number), None)

    # -- cut while the worker holds the experiment lock ----------------------------

    def cut_during_claim(self) -> None:
        """Cut the link while the namespaced worker holds the experiment's advisory lock, and measure the stall."""
        connection = self.cluster.connect(self.database)
        cursor = connection.cursor()
        address = self.link.namespace_address

        def lock_held() -> bool:
            cursor.execute(ADVISORY_LOCKS_OF_CLIENT, (address,))
            return cursor.fetchone()[0] > 0

        for attempt in range(1, 51):
            # Polled without sleeping: a claim holds the lock for a fraction of a second.
            if wait_until(lock_held, timeout_s=120, step_s=0.0) is None:
                raise SetupError("the namespaced worker did not take the experiment lock within 120 s")
            self.link.cut()
            time.sleep(0.2)
            if lock_held():
                break
            self.link.restore()
        else:
            raise SetupError("50 cuts missed the moment the namespaced worker held the experiment lock")
        cut_clock = time.monotonic()
        print(f"{datetime.now():%H:%M:%S} link down while worker cut holds the experiment lock "
              f"(attempt {attempt})", flush=True)

        trials_at_cut = len(self.monitor.rows() or [])
        first_new_trial = lock_released = None
        while time.monotonic() - cut_clock < self.args.hold:
            elapsed = time.monotonic() - cut_clock
            if first_new_trial is None and len(self.monitor.rows() or []) > trials_at_cut:
                first_new_trial = elapsed
            if lock_released is None and not lock_held():
                lock_released = elapsed
            time.sleep(0.2)
        connection.close()
        self.link.restore()
        print(f"{datetime.now():%H:%M:%S} link up after {time.monotonic() - cut_clock:.1f} s", flush=True)
        released = f"released after {lock_released:.1f} s" if lock_released is not None else "held all the time"
        self.check(
            "the host workers started trials while the lock holder was cut off",
            first_new_trial is not None,
            (f"first new trial {first_new_trial:.1f} s after the cut" if first_new_trial is not None
             else f"no new trial in {self.args.hold:.0f} s") + f"; the server-side lock was {released}",
        )

    # -- checks --------------------------------------------------------------------

    def check_trials(self, storage_url: str) -> None:
        cut_log = self.logs["cut"].read_text()
        if self.cut_trial is not None:
            after_late = cut_log.split(LATE_RESULT_MESSAGE, 1)[1] if LATE_RESULT_MESSAGE in cut_log else ""
            later_trials = re.findall(r"trial \d+ (?:complete|pruned):", after_late)
            self.check("the cut-off worker carried on after the late result",
                       bool(later_trials) or "every fold has its budget" in after_late,
                       f"{len(later_trials)} more trials finished by it")
            study, number = self.cut_trial
            stale_lines = [line for worker_id in ("host1", "host2")
                           for line in self.logs[worker_id].read_text().splitlines()
                           if f"{study} trial {number} (heartbeat stale" in line]
            self.check("a host worker logged the stale trial and its retry", bool(stale_lines),
                       stale_lines[0].split("] ", 1)[-1] if stale_lines else "no such line")

        storage = open_storage(storage_url, create_schema=False, connect_timeout_s=30)
        budget = self.args.trials_per_fold
        for name in self.studies:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
            states = [f"{t.number}:{t.state.name}" for t in trials]
            finished = [t for t in trials if t.state in FINISHED]
            self.check(f"{name} has exactly {budget} finished trials", len(finished) == budget, " ".join(states))
            self.check(f"{name} has no RUNNING or WAITING trial",
                       not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials))
            self.check(f"{name} finished trials all have held_out_auc",
                       all("held_out_auc" in t.user_attrs for t in finished))
            if self.cut_trial is not None and name == self.cut_trial[0]:
                lost = trials[self.cut_trial[1]]
                retries = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
                self.check("the cut-off trial stays FAIL without a result",
                           lost.state == TrialState.FAIL and "held_out_auc" not in lost.user_attrs,
                           f"state {lost.state.name}, attributes {sorted(lost.user_attrs)}")
                self.check("its retry finished on another worker",
                           any(t.state in FINISHED and t.user_attrs.get("worker_id") != "cut" for t in retries),
                           ", ".join(f"trial {t.number} {t.state.name} by {t.user_attrs.get('worker_id')}"
                                     for t in retries) or "no retry")

    def report(self) -> int:
        for line in self.logs["cut"].read_text().splitlines():
            if any(text in line for text in (LATE_RESULT_MESSAGE, "unreachable", "reachable again", "orphan", "Error")):
                print("  cut.log: " + line.split("] ", 1)[-1][:300])
        failures = 0
        for description, passed, detail in self.checks:
            failures += not passed
            print(f"{'PASS' if passed else 'FAIL'}: {description}" + (f" ({detail})" if detail else ""))
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
