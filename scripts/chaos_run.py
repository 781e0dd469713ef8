"""Chaos run: the workers of one experiment under SIGKILL, SIGTERM, database restarts and killed connections.

The run starts a private PostgreSQL server (tests/pgcluster.py), creates an
experiment with `hpo-coordinator create`, starts `hpo-worker` processes and
replaces each worker it stops. Each fault fires once the experiment has a
seeded random number of finished trials; then the run

* sends SIGKILL to a worker that has a RUNNING trial;
* sends SIGTERM to such a worker and measures how long it takes to exit;
* restarts the database server (fast shutdown, down for a moment);
* kills every client connection of the database with pg_terminate_backend.

Afterwards it checks that every fold has exactly its budget of finished
(COMPLETE or PRUNED) trials, that no trial is left RUNNING or WAITING, and that
every finished trial has the user attribute held_out_auc. It prints the counts
of faults, retried trials and lost trials, and the maximum time from a kill
until another worker marked the killed trial FAIL.

    python scripts/chaos_run.py --kills 20 --terms 3 --restarts 3 --connection-kills 5 --seed 1

tests/test_chaos.py runs the same harness with a few faults. Exit status: 0 when
every check passed, 1 when one failed, 2 when the run could not be set up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    # Run as `python scripts/chaos_run.py`, the script needs the repository root
    # on the path to import tests.pgcluster.
    sys.path.insert(0, str(REPO_ROOT))

import optuna  # noqa: E402
import psycopg2  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from shared.experiment import load_experiment  # noqa: E402
from shared.storage import open_storage  # noqa: E402
from tests.pgcluster import PgCluster, PgClusterError  # noqa: E402

REFERENCE_BBBP = REPO_ROOT.parent / "shared" / "data" / "BBBP.csv"
TINY_SPACE = REPO_ROOT / "tests" / "data" / "tiny-space.toml"

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
OPEN = (TrialState.RUNNING, TrialState.WAITING)

# Log messages of the product that show a recovery step, counted over all worker logs.
RECOVERY_PATTERNS = {
    "heartbeat stale": "heartbeat stale",
    "enqueued retry": "enqueued retry",
    "database unreachable": "database unreachable",
    "reachable again": "reachable again",
    "was stopped": "was stopped",
    "late result discarded": "discarding its late result",
    "not retried again": "not retrying again",
    # A claim whose advisory lock connection dropped, what it led to (a trial
    # failed over budget, or failed by another worker before it started), and
    # unowned trials failed as orphans.
    "lock lost while held": "was lost while held",
    "lost-lock claim over budget": "claimed while the experiment lock was lost",
    "claim failed before start": "was failed by another worker before it started",
    "orphan failed": "failing it as orphaned",
    "traceback": "Traceback",
}


class ChaosError(RuntimeError):
    """The chaos run could not be set up (experiment creation, worker start)."""


@dataclass
class ChaosSettings:
    """Worker flags, fault counts and limits of one chaos run."""

    workers: int = 4
    kills: int = 3
    terms: int = 1
    restarts: int = 1
    connection_kills: int = 1
    seed: int = 0
    # Each fault fires once the experiment has a seeded random number of finished
    # trials, at most this share of all folds' budgets. Tying faults to progress
    # and not to the clock lets every fault happen before the end on fast and
    # slow machines alike.
    fault_window: float = 0.7
    # Seconds between seeing a worker's RUNNING trial and signalling the worker.
    kill_delay_s: tuple[float, float] = (0.1, 1.0)
    term_delay_s: tuple[float, float] = (0.0, 0.2)
    heartbeat_interval: int = 1
    grace_period: int = 4
    poll_interval: float = 0.5
    # Seconds the database stays down during a restart.
    restart_down_s: float = 1.0
    term_exit_limit_s: float = 10.0
    # Seconds to wait for a worker with a RUNNING trial (or any RUNNING trial) before a fault.
    target_wait_s: float = 120.0
    timeout_s: float = 900.0


@dataclass
class WorkerProcess:
    """One `hpo-worker` process, the signal this run sent it, and its exit."""

    worker_id: str
    process: subprocess.Popen
    log_path: Path
    started: float
    signal_name: str | None = None
    signal_time: float | None = None
    exit_code: int | None = None
    exit_time: float | None = None

    @property
    def exit_seconds(self) -> float | None:
        """Seconds from the signal this run sent to the exit, or None."""
        if self.signal_time is None or self.exit_time is None:
            return None
        return self.exit_time - self.signal_time


@dataclass
class Fault:
    """One injected fault; kills and SIGTERMs name the worker and the trial it was running."""

    kind: str  # kill, term, restart or connection-kill
    at: datetime
    worker_id: str | None = None
    study: str | None = None
    trial_number: int | None = None
    detail: str = ""


@dataclass
class ChaosResult:
    """The faults, workers and trials of one run, and the problems its checks found (none when all passed)."""

    experiment: str
    budget: int
    folds: int
    faults: list[Fault] = field(default_factory=list)
    planned: Counter = field(default_factory=Counter)
    workers: list[WorkerProcess] = field(default_factory=list)
    trials: dict[str, list[optuna.trial.FrozenTrial]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    log_counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def injected(self) -> Counter:
        return Counter(fault.kind for fault in self.faults)

    def figures(self) -> dict[str, object]:
        """Return the summary figures of the run."""
        all_trials = [t for trials in self.trials.values() for t in trials]
        kills = [f for f in self.faults if f.kind == "kill"]
        kill_to_fail = self.kill_to_fail_seconds()
        term_exits = [w.exit_seconds for w in self.workers if w.signal_name == "SIGTERM"]
        return {
            "seconds": round(self.seconds, 1),
            "kills": len(kills),
            "kills that interrupted a trial": sum(1 for s in kill_to_fail.values() if s is not None),
            "sigterms": self.injected()["term"],
            "sigterm exit seconds max": max((s for s in term_exits if s is not None), default=None),
            "database restarts": self.injected()["restart"],
            "connection kills": self.injected()["connection-kill"],
            "worker processes": len(self.workers),
            "trials": len(all_trials),
            "trials failed": sum(t.state == TrialState.FAIL for t in all_trials),
            "trials retried": sum("retry_of" in t.user_attrs for t in all_trials),
            "trials lost": self.lost_trials(),
            "finished trials over budget": sum(
                max(sum(t.state in FINISHED for t in trials) - self.budget, 0) for trials in self.trials.values()),
            "max seconds from kill to FAIL": max((s for s in kill_to_fail.values() if s is not None), default=None),
            "late results discarded": self.log_counts["late result discarded"],
            "unexpected worker exits": len(self.unexpected_exits()),
        }

    def kill_to_fail_seconds(self) -> dict[str, float | None]:
        """Map each killed trial to the seconds from the kill until the trial was FAIL, or None if it finished."""
        by_key = {(s, t.number): t for s, trials in self.trials.items() for t in trials}
        seconds = {}
        for fault in self.faults:
            if fault.kind != "kill" or fault.study is None:
                continue
            trial = by_key.get((fault.study, fault.trial_number))
            key = f"{fault.study} trial {fault.trial_number}"
            if trial is None or trial.state != TrialState.FAIL or trial.datetime_complete is None:
                seconds[key] = None
            else:
                seconds[key] = round((trial.datetime_complete - fault.at).total_seconds(), 1)
        return seconds

    def lost_trials(self) -> int:
        """Count missing finished trials per fold, trials left open, and finished trials without held_out_auc."""
        lost = 0
        for trials in self.trials.values():
            finished = [t for t in trials if t.state in FINISHED]
            lost += max(self.budget - len(finished), 0)
            lost += sum(t.state in OPEN for t in trials)
            lost += sum("held_out_auc" not in t.user_attrs for t in finished)
        return lost

    def unexpected_exits(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.signal_name is None and w.exit_code not in (0, None)]

    def describe(self) -> str:
        """Return a multi-line account of faults, trial states per fold, problems and worker log tails."""
        lines = ["faults:"]
        for fault in self.faults:
            target = f" {fault.worker_id} ({fault.study} trial {fault.trial_number})" if fault.worker_id else ""
            lines.append(f"  {fault.at:%H:%M:%S.%f} {fault.kind}{target} {fault.detail}".rstrip())
        lines.append("trials (number state worker [retry_of] [fail_reason]):")
        for study, trials in sorted(self.trials.items()):
            lines.append(f"  {study}: {dict(Counter(t.state.name for t in trials))}")
            for t in trials:
                extra = ""
                if "retry_of" in t.user_attrs:
                    extra += f" retry_of={t.user_attrs['retry_of']}"
                if "fail_reason" in t.user_attrs:
                    extra += f" fail_reason={t.user_attrs['fail_reason']!r}"
                if t.state in FINISHED and "held_out_auc" not in t.user_attrs:
                    extra += " NO held_out_auc"
                lines.append(f"    {t.number} {t.state.name} {t.user_attrs.get('worker_id', '-')}{extra}")
        lines.append("workers (id exit signal seconds-to-exit):")
        for w in self.workers:
            lines.append(f"  {w.worker_id} exit={w.exit_code} signal={w.signal_name} exit_s={w.exit_seconds}")
        lines.append(f"log counts: {dict(self.log_counts)}")
        if self.problems:
            lines.append("problems:")
            lines.extend(f"  {p}" for p in self.problems)
            for w in self.unexpected_exits():
                lines.append(f"log tail of {w.worker_id}:")
                lines.extend("    " + line for line in w.log_path.read_text(errors="replace").splitlines()[-25:])
        return "\n".join(lines)


class TrialRow(NamedTuple):
    study: str
    number: int
    state: str  # TrialState name
    worker_id: str | None
    epochs: int  # dev AUCs reported so far


class TrialMonitor:
    """Reader of trial states and worker ids straight from Optuna's tables, which reconnects after outages."""

    QUERY = (
        "SELECT s.study_name, t.number, t.state, ua.value_json, "
        "(SELECT count(*) FROM trial_intermediate_values iv WHERE iv.trial_id = t.trial_id) "
        "FROM trials t JOIN studies s ON s.study_id = t.study_id "
        "LEFT JOIN trial_user_attributes ua ON ua.trial_id = t.trial_id AND ua.key = 'worker_id' "
        "WHERE s.study_name = ANY(%s)"
    )

    def __init__(self, cluster: PgCluster, database: str, studies: list[str]):
        self.cluster, self.database, self.studies = cluster, database, studies
        self.connection = None

    def rows(self) -> list[TrialRow] | None:
        """Return every trial of the experiment, or None while the database is unreachable."""
        try:
            if self.connection is None or self.connection.closed:
                self.connection = self.cluster.connect(self.database)
            with self.connection.cursor() as cursor:
                cursor.execute(self.QUERY, (self.studies,))
                result = cursor.fetchall()
        except psycopg2.Error:
            self.close()
            return None
        return [TrialRow(study, number, state, json.loads(worker) if worker else None, epochs)
                for study, number, state, worker, epochs in result]

    def running_by_worker(self, max_epochs: int | None = None) -> dict[str, tuple[str, int]] | None:
        """Map each worker id to the (study, number) of its RUNNING trial, if that trial has at most `max_epochs` reported."""
        rows = self.rows()
        if rows is None:
            return None
        return {row.worker_id: (row.study, row.number) for row in rows
                if row.state == "RUNNING" and row.worker_id and (max_epochs is None or row.epochs <= max_epochs)}

    def is_complete(self, budget: int) -> bool:
        """Return True when every fold has its budget of finished trials and none is RUNNING or WAITING."""
        rows = self.rows()
        if rows is None:
            return False
        finished = Counter(row.study for row in rows if row.state in ("COMPLETE", "PRUNED"))
        open_trials = sum(row.state in ("RUNNING", "WAITING") for row in rows)
        return open_trials == 0 and all(finished[study] >= budget for study in self.studies)

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            except psycopg2.Error:
                pass
        self.connection = None


class ChaosRun:
    """Run the workers of an existing experiment while injecting faults, then check the trials."""

    def __init__(self, cluster: PgCluster, database: str, experiment: str, settings: ChaosSettings, workdir: Path,
                 log=print):
        self.cluster, self.database, self.experiment = cluster, database, experiment
        self.settings = settings
        self.storage_url = cluster.url(database)
        self.workdir = workdir
        self.log = log
        self.rng = random.Random(settings.seed)
        self.processes: list[WorkerProcess] = []
        self.next_worker_number = 1

    # -- setup ---------------------------------------------------------------------

    def create_experiment(self, create_args: list[str]) -> None:
        """Run `hpo-coordinator create` with the given flags (which must name this storage and experiment)."""
        result = subprocess.run([sys.executable, "-m", "coordinator", "create", *create_args],
                                capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
        if result.returncode != 0:
            raise ChaosError(f"hpo-coordinator create failed with exit status {result.returncode}:\n{result.stderr}")

    def worker_command(self, worker_id: str) -> list[str]:
        """Return the command line of one worker process."""
        return [
            sys.executable, "-m", "worker", "--storage", self.storage_url, "--experiment", self.experiment,
            "--worker-id", worker_id, "--threads", "1", "--poll-interval", str(self.settings.poll_interval),
            "--heartbeat-interval", str(self.settings.heartbeat_interval),
            "--grace-period", str(self.settings.grace_period),
        ]

    def _start_worker(self) -> WorkerProcess:
        worker_id = f"w{self.next_worker_number}"
        self.next_worker_number += 1
        log_path = self.workdir / f"{worker_id}.log"
        with log_path.open("w") as log_file:
            process = subprocess.Popen(self.worker_command(worker_id), cwd=REPO_ROOT, stdout=log_file,
                                       stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        worker = WorkerProcess(worker_id, process, log_path, time.monotonic())
        self.processes.append(worker)
        # A thread blocked in wait() records the exit time exactly, because the
        # supervision loop would see the exit late while it restarts the database.
        threading.Thread(target=self._record_exit_time, args=(worker,), daemon=True).start()
        return worker

    @staticmethod
    def _record_exit_time(worker: WorkerProcess) -> None:
        worker.process.wait()
        worker.exit_time = time.monotonic()

    # -- the run -------------------------------------------------------------------

    def run(self) -> ChaosResult:
        """Start the workers, inject the planned faults in seeded random order, wait for the end, check."""
        started = time.monotonic()
        storage = open_storage(self.storage_url, create_schema=False, connect_timeout_s=30)
        record = load_experiment(storage, self.experiment)
        studies = [fold.study_name for fold in record.folds]
        budget = record.settings.trials_per_fold
        result = ChaosResult(self.experiment, budget, len(studies))
        self.result = result
        self.monitor = TrialMonitor(self.cluster, self.database, studies)
        self.budget = budget
        self.deadline = started + self.settings.timeout_s

        plan = self._plan(budget * len(studies))
        result.planned = Counter(kind for _, kind in plan)
        self.log("fault plan (finished trials, fault): " + ", ".join(f"{n} {kind}" for n, kind in plan))

        for _ in range(self.settings.workers):
            self._start_worker()
        try:
            for threshold, kind in plan:
                if self._wait_for(lambda: self._finished_trials() >= threshold, timeout_s=self.settings.timeout_s) is None:
                    break
                if self.monitor.is_complete(budget):
                    break
                self._inject(kind)
            self._wait_for_workers()
        finally:
            for worker in self.processes:
                if worker.process.poll() is None:
                    worker.process.kill()
                    worker.process.wait()
                    result.problems.append(f"worker {worker.worker_id} still ran at the end and was killed")
            self.monitor.close()
        result.workers = self.processes
        result.seconds = time.monotonic() - started
        self._check(storage, studies, result)
        return result

    def _plan(self, total_budget: int) -> list[tuple[int, str]]:
        """Return (finished trials, fault kind) pairs in firing order, drawn from the seeded generator."""
        kinds = (["kill"] * self.settings.kills + ["term"] * self.settings.terms
                 + ["restart"] * self.settings.restarts + ["connection-kill"] * self.settings.connection_kills)
        self.rng.shuffle(kinds)
        last = max(1, int(total_budget * self.settings.fault_window))
        thresholds = sorted(self.rng.randint(0, last) for _ in kinds)
        return list(zip(thresholds, kinds))

    def _finished_trials(self) -> int:
        rows = self.monitor.rows()
        if rows is None:
            return -1
        return sum(row.state in ("COMPLETE", "PRUNED") for row in rows)

    def _inject(self, kind: str) -> None:
        if kind in ("kill", "term"):
            self._signal_worker(kind)
        elif kind == "restart":
            if self._wait_for(lambda: self.monitor.running_by_worker() or None) is None:
                self.result.problems.append("no RUNNING trial appeared for the database restart")
                return
            at = datetime.now()
            seconds = self.cluster.restart(down_s=self.settings.restart_down_s)
            self._record(Fault("restart", at, detail=f"down {seconds:.1f} s"))
        elif kind == "connection-kill":
            if self._wait_for(lambda: self.monitor.running_by_worker() or None) is None:
                self.result.problems.append("no RUNNING trial appeared for the connection kill")
                return
            at = datetime.now()
            killed = self.cluster.terminate_backends(self.database)
            self._record(Fault("connection-kill", at, detail=f"{killed} connections"))

    def _signal_worker(self, kind: str) -> None:
        """Signal a live worker while it has a RUNNING trial: SIGKILL for kill, SIGTERM for term.

        SIGTERM goes only to a worker whose trial has reported no epoch yet. The
        worker checks for a stop request before every batch but lets a trial in
        its held-out evaluation finish, so a later SIGTERM may interrupt nothing.
        """
        delay_range = self.settings.kill_delay_s if kind == "kill" else self.settings.term_delay_s
        max_epochs = None if kind == "kill" else 0
        give_up = time.monotonic() + self.settings.target_wait_s
        while time.monotonic() < give_up and time.monotonic() < self.deadline:
            candidates = self._wait_for(lambda: self._targets(max_epochs), timeout_s=give_up - time.monotonic())
            if not candidates:
                break
            worker_id = self.rng.choice(sorted(candidates))
            self._wait(self.rng.uniform(*delay_range))
            # The trial may have finished during the delay, so the worker is signalled only if it still runs.
            now_running = self._targets(max_epochs) or {}
            if now_running.get(worker_id) != candidates[worker_id]:
                continue
            worker = next(w for w in self.processes if w.worker_id == worker_id)
            study, number = candidates[worker_id]
            at = datetime.now()
            worker.signal_name = "SIGKILL" if kind == "kill" else "SIGTERM"
            worker.signal_time = time.monotonic()
            worker.process.send_signal(signal.SIGKILL if kind == "kill" else signal.SIGTERM)
            self._record(Fault(kind, at, worker_id, study, number))
            return
        self.result.problems.append(f"{kind}: no live worker had a RUNNING trial within {self.settings.target_wait_s:.0f} s")

    def _targets(self, max_epochs: int | None) -> dict[str, tuple[str, int]] | None:
        running = self.monitor.running_by_worker(max_epochs)
        if running is None:
            return None
        live = {w.worker_id for w in self.processes if w.process.poll() is None and w.signal_name is None}
        return {worker: trial for worker, trial in running.items() if worker in live} or None

    def _record(self, fault: Fault) -> None:
        self.result.faults.append(fault)
        target = f" {fault.worker_id} ({fault.study} trial {fault.trial_number})" if fault.worker_id else ""
        self.log(f"{fault.at:%H:%M:%S} {fault.kind}{target} {fault.detail}".rstrip())

    # -- supervision ---------------------------------------------------------------

    def _supervise(self) -> None:
        """Record exits, replace the workers this run signalled, and SIGKILL a SIGTERMed worker that hangs."""
        for worker in list(self.processes):
            if worker.exit_code is not None:
                continue
            code = worker.process.poll()
            if code is None:
                if (worker.signal_name == "SIGTERM"
                        and time.monotonic() - worker.signal_time > self.settings.term_exit_limit_s + 5):
                    self.result.problems.append(
                        f"worker {worker.worker_id} still ran {self.settings.term_exit_limit_s + 5:.0f} s after "
                        "SIGTERM; killed it")
                    worker.process.kill()
                continue
            worker.exit_code = code
            if worker.exit_time is None:
                worker.exit_time = time.monotonic()
            if worker.signal_name is None and code != 0:
                self.result.problems.append(f"worker {worker.worker_id} exited with status {code} on its own")
            if (worker.signal_name is not None or code != 0) and not self.monitor.is_complete(self.budget):
                replacement = self._start_worker()
                self.log(f"{datetime.now():%H:%M:%S} {worker.worker_id} exited ({code}); "
                         f"started {replacement.worker_id}")

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            self._supervise()
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(0.1, remaining))

    def _wait_for(self, probe, timeout_s: float | None = None):
        """Supervise until `probe()` returns a truthy value and return it, or None after the timeout."""
        end = time.monotonic() + (self.settings.target_wait_s if timeout_s is None else timeout_s)
        end = min(end, self.deadline)
        while time.monotonic() < end:
            self._supervise()
            value = probe()
            if value:
                return value
            time.sleep(0.1)
        return None

    def _wait_for_workers(self) -> None:
        while time.monotonic() < self.deadline:
            self._supervise()
            if all(w.exit_code is not None for w in self.processes):
                return
            time.sleep(0.2)
        self.result.problems.append(f"timed out after {self.settings.timeout_s:.0f} s with workers still running")

    # -- checks --------------------------------------------------------------------

    def _check(self, storage, studies: list[str], result: ChaosResult) -> None:
        for study_name in studies:
            study = optuna.load_study(study_name=study_name, storage=storage)
            trials = study.get_trials(deepcopy=False)
            result.trials[study_name] = trials
            states = [f"{t.number}:{t.state.name}" for t in trials]
            finished = [t for t in trials if t.state in FINISHED]
            if len(finished) != result.budget:
                result.problems.append(
                    f"{study_name} has {len(finished)} finished trials, budget {result.budget}: {states}")
            left_open = [t.number for t in trials if t.state in OPEN]
            if left_open:
                result.problems.append(f"{study_name} trials {left_open} are still RUNNING or WAITING: {states}")
            no_result = [t.number for t in finished if "held_out_auc" not in t.user_attrs]
            if no_result:
                result.problems.append(f"{study_name} finished trials {no_result} have no held_out_auc")

        for planned_kind, count in result.planned.items():
            if result.injected()[planned_kind] != count:
                result.problems.append(
                    f"{planned_kind}: {result.injected()[planned_kind]} of {count} injected "
                    "(the experiment ended first, or no target appeared)")
        for worker in result.workers:
            if worker.signal_name == "SIGTERM":
                seconds = worker.exit_seconds
                if seconds is None or seconds > self.settings.term_exit_limit_s:
                    result.problems.append(f"worker {worker.worker_id} took {seconds} s to exit after SIGTERM")
        for worker in result.workers:
            text = worker.log_path.read_text(errors="replace")
            for name, pattern in RECOVERY_PATTERNS.items():
                result.log_counts[name] += len(re.findall(re.escape(pattern), text))


def experiment_flags(storage_url: str, experiment: str, data: Path, folds: int, trials: int, max_epochs: int,
                     max_retries: int) -> list[str]:
    """Flags of `hpo-coordinator create` for a small experiment on a BBBP extract with the tiny test search space."""
    return [
        "--storage", storage_url, "--experiment", experiment,
        "--dataset", str(data), "--smiles-column", "smiles", "--label-column", "p_np",
        "--folds", str(folds), "--trials-per-fold", str(trials), "--max-epochs", str(max_epochs),
        "--search-space", str(TINY_SPACE), "--batch-size", "32", "--max-retries", str(max_retries),
    ]


def write_extract(source: Path, rows: int, target: Path) -> Path:
    """Write the header and the first `rows` data rows of a CSV file."""
    lines = source.read_text().splitlines()[: rows + 1]
    target.write_text("\n".join(lines) + "\n")
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--kills", type=int, default=20, help="SIGKILLs of workers with a RUNNING trial (default 20)")
    add("--terms", type=int, default=3, help="SIGTERMs of workers with a RUNNING trial (default 3)")
    add("--restarts", type=int, default=3, help="database server restarts (default 3)")
    add("--connection-kills", type=int, default=5,
        help="times every client connection of the database is killed with pg_terminate_backend (default 5)")
    add("--seed", type=int, default=1, help="seed of the fault order, targets and moments (default 1)")
    add("--workers", type=int, default=4, help="worker processes at a time (default 4)")
    add("--folds", type=int, default=3, help="folds of the experiment (default 3)")
    add("--trials-per-fold", type=int, default=20, help="budget of finished trials per fold (default 20)")
    add("--max-epochs", type=int, default=3, help="epochs per trial at most (default 3)")
    add("--max-retries", type=int, default=3, help="retries of an interrupted trial (default 3)")
    add("--heartbeat-interval", type=int, default=1, help="worker heartbeat interval in seconds (default 1)")
    add("--grace-period", type=int, default=4, help="worker grace period in seconds (default 4)")
    add("--fault-window", type=float, default=0.7,
        help="faults fire at random numbers of finished trials up to this share of the total budget (default 0.7)")
    add("--restart-down", type=float, default=1.0, help="seconds the database stays down per restart (default 1)")
    add("--data", type=Path, default=REFERENCE_BBBP, help=f"BBBP CSV file (default {REFERENCE_BBBP})")
    add("--rows", type=int, default=240, help="data rows of the BBBP file to use (default 240)")
    add("--timeout", type=float, default=3600, help="seconds before the run is stopped as failed (default 3600)")
    add("--workdir", type=Path, default=None, help="folder for worker logs and the data extract (default: a new temporary folder)")
    add("--json", type=Path, default=None, help="also write the figures and problems to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.data.is_file():
        print(f"error: data file {args.data} not found: pass --data with a BBBP CSV file", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hpo-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = write_extract(args.data, args.rows, workdir / "bbbp-extract.csv")
    settings = ChaosSettings(
        workers=args.workers, kills=args.kills, terms=args.terms, restarts=args.restarts,
        connection_kills=args.connection_kills, seed=args.seed, fault_window=args.fault_window,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
        restart_down_s=args.restart_down, timeout_s=args.timeout,
    )
    experiment = "chaos"
    print(f"worker logs in {workdir}", flush=True)
    try:
        with PgCluster() as cluster:
            cluster.create_database("chaos")
            run = ChaosRun(cluster, "chaos", experiment, settings, workdir, log=lambda line: print(line, flush=True))
            run.create_experiment(experiment_flags(cluster.url("chaos"), experiment, data, args.folds,
                                                   args.trials_per_fold, args.max_epochs, args.max_retries))
            result = run.run()
    except (PgClusterError, ChaosError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(result.describe())
    print("\nfigures:")
    figures = result.figures()
    for name, value in figures.items():
        print(f"  {name}: {value}")
    print("  seconds from kill to FAIL per killed trial: " + json.dumps(result.kill_to_fail_seconds()))
    if args.json:
        args.json.write_text(json.dumps({
            "settings": asdict(settings), "folds": args.folds, "trials_per_fold": args.trials_per_fold,
            "max_epochs": args.max_epochs, "max_retries": args.max_retries, "figures": figures,
            "kill_to_fail_seconds": result.kill_to_fail_seconds(), "log_counts": dict(result.log_counts),
            "problems": result.problems,
        }, indent=2, default=str))
    if result.problems:
        print("\nFAILED: " + "; ".join(result.problems))
        return 1
    print("\nPASSED: every fold has exactly its budget, nothing is left open, every finished trial has held_out_auc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
