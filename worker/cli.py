"""`hpo-worker`: pull and train trials of an experiment until every fold has its budget."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from pathlib import Path

import torch

from shared.cli_support import add_verbosity, env_default, env_float, env_int, run_main, setup_logging
from shared.errors import ConfigError
from shared.experiment import validate_experiment_name
from shared.placement import GpuClaim, claim_gpu, count_visible_gpus
from shared.storage import DEFAULT_CONNECT_TIMEOUT_S, resolve_storage_setting
from worker.loop import Worker, WorkerOptions

logger = logging.getLogger(__name__)

# Heartbeats (PostgreSQL only) come from a background thread, so a long epoch
# does not delay them. The grace period is ten beats long, so that a GC pause or
# a short database restart does not fail a live trial.
DEFAULT_HEARTBEAT_INTERVAL_S = 30
DEFAULT_GRACE_PERIOD_S = 300


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpo-worker", description=__doc__)
    parser.add_argument("--storage", default=None, help="postgresql+psycopg2:// URL or journal file path [HPO_STORAGE]")
    parser.add_argument("--experiment", default=env_default("HPO_EXPERIMENT"), help="experiment name [HPO_EXPERIMENT]")
    parser.add_argument("--worker-id", default=env_default("HPO_WORKER_ID"),
                        help="id recorded on each trial (default <hostname>-<pid>) [HPO_WORKER_ID]")
    parser.add_argument("--device", default=env_default("HPO_DEVICE", "auto"),
                        help="auto (the GPU if present, else the CPU), cpu, cuda or cuda:N [HPO_DEVICE]")
    parser.add_argument("--gpu-lock-dir", default=env_default("HPO_GPU_LOCK_DIR"),
                        help="folder shared by the workers of one node; with --device auto or cuda, each worker "
                             "claims a GPU there so the node's GPUs are shared evenly [HPO_GPU_LOCK_DIR]")
    parser.add_argument("--data", default=env_default("HPO_DATA"),
                        help="this worker's copy of the experiment's dataset file, if its path differs [HPO_DATA]")
    parser.add_argument("--logdir", type=Path, default=env_default("HPO_LOGDIR"),
                        help="TensorBoard log folder; trials write <logdir>/<study>/trial-<n> [HPO_LOGDIR]")
    parser.add_argument("--threads", type=int, default=env_int("HPO_THREADS", None),
                        help="CPU threads for PyTorch (default: PyTorch's choice) [HPO_THREADS]")
    parser.add_argument("--connect-timeout", type=float, default=env_float("HPO_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S),
                        help="seconds to keep retrying an unreachable database (default 120) [HPO_CONNECT_TIMEOUT]")
    parser.add_argument("--heartbeat-interval", type=int,
                        default=env_int("HPO_HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_INTERVAL_S),
                        help="seconds between heartbeats of a running trial, PostgreSQL only (default 30) [HPO_HEARTBEAT_INTERVAL]")
    parser.add_argument("--grace-period", type=int, default=env_int("HPO_GRACE_PERIOD", DEFAULT_GRACE_PERIOD_S),
                        help="seconds without heartbeat before a trial is failed and retried (default 300) [HPO_GRACE_PERIOD]")
    parser.add_argument("--poll-interval", type=float, default=env_float("HPO_POLL_INTERVAL", 5.0),
                        help="seconds to wait when no fold has open budget (default 5) [HPO_POLL_INTERVAL]")
    parser.add_argument("--max-consecutive-failures", type=int, default=env_int("HPO_MAX_CONSECUTIVE_FAILURES", 3),
                        help="exit non-zero after this many failed trials in a row (default 3) [HPO_MAX_CONSECUTIVE_FAILURES]")
    add_verbosity(parser)
    return parser


def resolve_device(setting: str, gpu_lock_dir: str | None, worker_id: str) -> tuple[torch.device, GpuClaim | None]:
    """Pick the training device; for auto or cuda with a GPU lock folder, claim one of the node's GPUs.

    Claims spread the workers of a node evenly over its GPUs.

    The returned claim must stay referenced for the life of the process.
    """
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested, but PyTorch sees no CUDA device: use auto or cpu")
    if setting in ("auto", "cuda"):
        try:
            n_gpus = count_visible_gpus()
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if gpu_lock_dir and n_gpus > 0:
            claim = claim_gpu(Path(gpu_lock_dir), n_gpus, owner=f"worker {worker_id}")
            # HPO_PRETEND_GPUS claims slots on a machine without CUDA, for tests;
            # such a worker still trains on the CPU.
            device = torch.device(claim.device if torch.cuda.is_available() else "cpu")
            return device, claim
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), None
    try:
        device = torch.device(setting)
    except RuntimeError as error:
        raise ConfigError(f"--device {setting!r} is invalid ({error}): use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {setting} requested, but PyTorch sees no CUDA device: use auto or cpu")
    return device, None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    setup_logging(args, prefix=f"worker {worker_id}")
    if args.heartbeat_interval < 1 or args.grace_period <= args.heartbeat_interval:
        raise ConfigError(
            f"--heartbeat-interval {args.heartbeat_interval} and --grace-period {args.grace_period} are invalid: "
            "the interval must be at least 1 s and the grace period longer than it"
        )
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} is invalid: use 1 or more")
        torch.set_num_threads(args.threads)

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logger.warning("worker %s received %s; stopping the running trial", worker_id, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    device, gpu_claim = resolve_device(args.device, args.gpu_lock_dir, worker_id)
    options = WorkerOptions(
        storage=resolve_storage_setting(args.storage),
        experiment=validate_experiment_name(args.experiment or ""),
        worker_id=worker_id,
        device=device,
        logdir=args.logdir,
        data_path=args.data,
        connect_timeout_s=args.connect_timeout,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        poll_interval_s=args.poll_interval,
        max_consecutive_failures=args.max_consecutive_failures,
    )
    try:
        return Worker(options, stop).run()
    finally:
        if gpu_claim is not None:
            gpu_claim.release()


def run() -> None:
    run_main(main, fast_exit=True)


if __name__ == "__main__":
    run()
