"""GPU placement across worker processes, with pretended GPUs and real subprocesses."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.placement import PRETEND_GPUS_ENV, claim_gpu, count_visible_gpus

REPO_ROOT = Path(__file__).resolve().parents[1]
CLAIM_TIMEOUT_S = 30

# A stand-in for a worker: it claims a GPU the way the worker does, prints the claim and
# keeps it until its standard input closes or it is killed.
WORKER_SCRIPT = """
import json, sys
from pathlib import Path
from shared.placement import claim_gpu, count_visible_gpus
claim = claim_gpu(Path(sys.argv[1]), count_visible_gpus(), owner=sys.argv[2])
print(json.dumps({"index": claim.index, "slot": claim.slot}), flush=True)
sys.stdin.read()
"""


class WorkerProcess:
    def __init__(self, lock_dir: Path, n_gpus: int, name: str) -> None:
        env = dict(os.environ)
        env[PRETEND_GPUS_ENV] = str(n_gpus)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, str(lock_dir), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.index = -1
        self.slot = -1

    def read_claim(self) -> tuple[int, int]:
        """Wait for the claim line; fail with the worker's stderr if none comes."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], CLAIM_TIMEOUT_S)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.process.kill()
            _, stderr = self.process.communicate(timeout=CLAIM_TIMEOUT_S)
            pytest.fail(
                f"worker {self.name} printed no claim within {CLAIM_TIMEOUT_S} s "
                f"(exit code {self.process.returncode}); stderr:\n{stderr}"
            )
        claim = json.loads(line)
        self.index, self.slot = claim["index"], claim["slot"]
        return self.index, self.slot

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=CLAIM_TIMEOUT_S)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=CLAIM_TIMEOUT_S)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator:
    lock_dir = tmp_path / "gpu-locks"
    workers: list[WorkerProcess] = []

    def start(n_gpus: int, *, wait: bool = True) -> WorkerProcess:
        worker = WorkerProcess(lock_dir, n_gpus, name=f"worker-{len(workers)}")
        workers.append(worker)
        if wait:
            worker.read_claim()
        return worker

    yield start
    for worker in workers:
        worker.stop()


def gpu_loads(workers: list[WorkerProcess]) -> dict[int, int]:
    return dict(sorted(Counter(worker.index for worker in workers).items()))


def test_count_visible_gpus_pretended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRETEND_GPUS_ENV, "3")
    assert count_visible_gpus() == 3
    monkeypatch.setenv(PRETEND_GPUS_ENV, "0")
    assert count_visible_gpus() == 0


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_count_visible_gpus_invalid_pretend(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(PRETEND_GPUS_ENV, value)
    with pytest.raises(ValueError, match=PRETEND_GPUS_ENV):
        count_visible_gpus()


def test_count_visible_gpus_real_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.delenv(PRETEND_GPUS_ENV, raising=False)
    expected = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert count_visible_gpus() == expected


@pytest.mark.parametrize("n_gpus", [0, -2])
def test_claim_gpu_rejects_no_gpus(tmp_path: Path, n_gpus: int) -> None:
    with pytest.raises(ValueError, match="at least one GPU"):
        claim_gpu(tmp_path, n_gpus)


def test_claim_in_process_release(tmp_path: Path) -> None:
    first = claim_gpu(tmp_path, 2, owner="first")
    second = claim_gpu(tmp_path, 2, owner="second")
    assert (first.index, first.slot) == (0, 0)
    assert (second.index, second.slot) == (1, 0), "a second claim must take the idle GPU"
    assert second.device == "cuda:1"
    assert first.path.read_text() == "first\n", "the slot file must name its owner"

    first.release()
    assert not first.held
    first.release()  # A second release must do nothing.

    with claim_gpu(tmp_path, 2) as third:
        assert (third.index, third.slot) == (0, 0), "a released slot must be claimed again"
        assert third.held
    assert not third.held, "leaving the with block must release the claim"
    second.release()


def test_claim_ignores_slots_of_missing_gpus(tmp_path: Path) -> None:
    # A slot file left by a node with more GPUs, which no process locks.
    (tmp_path / "gpu5-slot0.lock").write_text("old\n")
    with claim_gpu(tmp_path, 1) as claim:
        assert (claim.index, claim.slot) == (0, 0)


def test_four_workers_share_two_gpus(start_worker) -> None:
    workers = [start_worker(2) for _ in range(4)]

    claims = [(worker.index, worker.slot) for worker in workers]
    assert claims == [(0, 0), (1, 0), (0, 1), (1, 1)], "workers must fill slots GPU by GPU"
    assert gpu_loads(workers) == {0: 2, 1: 2}


def test_killed_worker_gpu_reused(start_worker) -> None:
    workers = [start_worker(2) for _ in range(4)]
    victim = workers[1]
    victim_claim = (victim.index, victim.slot)

    victim.kill()
    replacement = start_worker(2)

    assert (replacement.index, replacement.slot) == victim_claim, (
        f"the replacement took GPU {replacement.index} slot {replacement.slot}, "
        f"but the SIGKILLed worker's GPU {victim_claim[0]} slot {victim_claim[1]} was free"
    )
    survivors = [worker for worker in workers if worker is not victim] + [replacement]
    assert gpu_loads(survivors) == {0: 2, 1: 2}


def test_fewer_workers_than_gpus(start_worker) -> None:
    workers = [start_worker(4) for _ in range(3)]

    assert sorted(worker.index for worker in workers) == [0, 1, 2]
    assert all(worker.slot == 0 for worker in workers), "no GPU may be shared while one is idle"


def test_simultaneous_start_balanced(start_worker) -> None:
    workers = [start_worker(2, wait=False) for _ in range(6)]
    claims = [worker.read_claim() for worker in workers]

    assert len(set(claims)) == len(claims), f"two workers hold the same slot: {claims}"
    assert gpu_loads(workers) == {0: 3, 1: 3}


def test_replacement_goes_to_least_used_gpu(start_worker) -> None:
    workers = [start_worker(2) for _ in range(5)]
    assert [(worker.index, worker.slot) for worker in workers] == [
        (0, 0), (1, 0), (0, 1), (1, 1), (0, 2),
    ]

    # Leaves GPU 0 with slots 1 and 2 held and GPU 1 with slot 0 held.
    workers[0].kill()
    workers[3].kill()
    replacement = start_worker(2)

    assert replacement.index == 1, (
        f"GPU 1 had one worker and GPU 0 had two, but the replacement took GPU {replacement.index}"
    )
    assert replacement.slot == 1
