"""`hpo-run`: the whole job on one machine.

It creates the experiment on the embedded journal store (or any storage given),
starts N worker processes, recovers the trials of a worker that dies, and
prints the cross-validation report. The journal store has no heartbeats, so
this process, which owns the workers, is what recovers their trials.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from coordinator.create import create_experiment
from coordinator.options import add_experiment_options, dataset_spec_from_args, settings_from_args
from coordinator.report import build_report, format_report, format_status, write_json
from shared.cleaning import load_dataset
from shared.cli_support import EXIT_USER_ERROR, add_verbosity, env_default, env_float, env_int, run_main, setup_logging
from shared.errors import ConfigError
from shared.experiment import ExperimentRecord, load_experiment, validate_experiment_name
from shared.recovery import fail_and_retry
from shared.storage import DEFAULT_CONNECT_TIMEOUT_S, experiment_lock, mask_url, open_storage

logger = logging.getLogger(__name__)

# Worker exit statuses after which a restart would fail the same way.
_NO_RESTART_STATUSES = {EXIT_USER_ERROR, 3}
_POLL_S = 0.5
_STOP_TIMEOUT_S = 20.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpo-run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=env_default("HPO_EXPERIMENT", "local"),
                        help="experiment name (default local) [HPO_EXPERIMENT]")
    parser.add_argument("--workdir", type=Path, default=Path(env_default("HPO_WORKDIR", "hpo-runs")),
                        help="folder for the journal, TensorBoard logs and report (default hpo-runs) [HPO_WORKDIR]")
    parser.add_argument("--storage", default=env_default("HPO_STORAGE"),
                        help="storage (default: the journal file <workdir>/<experiment>/journal.log) [HPO_STORAGE]")
    parser.add_argument("--workers", type=int, default=env_int("HPO_WORKERS", 2),
                        help="worker processes to run (default 2) [HPO_WORKERS]")
    parser.add_argument("--device", default=env_default("HPO_DEVICE", "auto"), help="device for every worker [HPO_DEVICE]")
    parser.add_argument("--worker-restarts", type=int, default=env_int("HPO_WORKER_RESTARTS", 3),
                        help="times a worker that died is replaced (default 3) [HPO_WORKER_RESTARTS]")
    parser.add_argument("--connect-timeout", type=float,
                        default=env_float("HPO_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S),
                        help="seconds to keep retrying an unreachable database (default 120) [HPO_CONNECT_TIMEOUT]")
    add_verbosity(parser)
    add_experiment_options(parser)
    return parser


@dataclass
class _Slot:
    index: int
    worker_id: str
    process: subprocess.Popen
    restarts: int = 0


class LocalRun:
    def __init__(self, args: argparse.Namespace, storage_setting: str, run_dir: Path):
        self.args = args
        self.storage_setting = storage_setting
        self.run_dir = run_dir
        self.threads = max(1, (os.cpu_count() or 1) // args.workers)
        self.stopping = False

    def worker_command(self, worker_id: str) -> list[str]:
        command = [
            sys.executable, "-m", "worker",
            "--storage", self.storage_setting,
            "--experiment", self.args.experiment,
            "--worker-id", worker_id,
            "--device", self.args.device,
            "--threads", str(self.threads),
            "--logdir", str(self.run_dir / "tensorboard"),
            "--poll-interval", "1",
            "--connect-timeout", str(self.args.connect_timeout),
        ]
        if self.args.quiet:
            command.append("--quiet")
        command += ["--verbose"] * self.args.verbose
        return command

    def start(self, index: int, restarts: int = 0) -> _Slot:
        worker_id = f"local-{index}" if restarts == 0 else f"local-{index}-r{restarts}"
        process = subprocess.Popen(self.worker_command(worker_id), stdin=subprocess.DEVNULL)
        logger.info("started worker %s (pid %d)", worker_id, process.pid)
        return _Slot(index, worker_id, process, restarts)

    def recover(self, storage, record: ExperimentRecord, worker_id: str, reason: str) -> int:
        """Fail the dead worker's RUNNING trials and enqueue their retries; return how many."""
        recovered = 0
        with experiment_lock(self.storage_setting, storage, record.name):
            for fold in record.folds:
                study = optuna.load_study(study_name=fold.study_name, storage=storage)
                for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    # A trial without a worker_id was claimed by a worker that died
                    # inside its claim; claims finish under this lock, so none is
                    # in progress now.
                    if trial.user_attrs.get("worker_id", worker_id) == worker_id:
                        recovered += fail_and_retry(study, trial, reason, record.settings.max_retries)
        return recovered

    def supervise(self, storage, record: ExperimentRecord) -> bool:
        """Run the workers to the end; return True when every worker exited cleanly."""
        slots = [self.start(i) for i in range(self.args.workers)]
        clean = True
        while slots:
            time.sleep(_POLL_S)
            if self.stopping:
                self._stop_all(slots)
                for slot in slots:
                    self.recover(storage, record, slot.worker_id, "local run was stopped")
                return False
            for slot in list(slots):
                status = slot.process.poll()
                if status is None:
                    continue
                slots.remove(slot)
                if status == 0:
                    logger.info("worker %s finished", slot.worker_id)
                    continue
                reason = f"worker {slot.worker_id} exited with status {status}"
                recovered = self.recover(storage, record, slot.worker_id, reason)
                logger.warning("%s; recovered %d running trials", reason, recovered)
                if status in _NO_RESTART_STATUSES or slot.restarts >= self.args.worker_restarts:
                    clean = False
                    continue
                slots.append(self.start(slot.index, slot.restarts + 1))
        return clean

    def _stop_all(self, slots: list[_Slot]) -> None:
        for slot in slots:
            if slot.process.poll() is None:
                slot.process.terminate()
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for slot in slots:
            try:
                slot.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                slot.process.kill()
                slot.process.wait()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args, prefix="hpo-run")
    experiment = validate_experiment_name(args.experiment)
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} is invalid: use 1 or more")
    run_dir = args.workdir / experiment
    storage_setting = args.storage or str(run_dir / "journal.log")

    spec = dataset_spec_from_args(args)
    settings = settings_from_args(args, spec)
    dataset = load_dataset(spec)
    storage = open_storage(storage_setting, create_schema=True, connect_timeout_s=args.connect_timeout)
    result = create_experiment(storage_setting, storage, experiment, settings, dataset, spec.path)
    logger.info("experiment %s in %s: created folds %s, existing %s", experiment, mask_url(storage_setting),
                result.created + result.completed, result.unchanged)
    record = load_experiment(storage, experiment)

    local = LocalRun(args, storage_setting, run_dir)

    def request_stop(signum: int, _frame: object) -> None:
        logger.warning("received %s; stopping the workers", signal.Signals(signum).name)
        local.stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    clean = local.supervise(storage, record)

    report = build_report(storage, record)
    print(format_status(report))
    print(format_report(report))
    report_path = run_dir / "report.json"
    write_json(report, report_path)
    print(f"report written to {report_path}; TensorBoard logs in {run_dir / 'tensorboard'}")
    if local.stopping:
        return 130
    return 0 if clean and report["complete"] else 1


def run() -> None:
    run_main(main)


if __name__ == "__main__":
    run()
