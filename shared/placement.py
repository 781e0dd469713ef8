"""GPU placement for the worker replicas of one node, with no per-replica settings.

Docker Compose gives every replica of a scaled service the same GPU reservation and no
replica index, so without placement all workers of a node would train on GPU 0. Instead,
each worker claims a slot lock file in a directory that all worker replicas of the node
share (a named volume in Compose):

    gpu0-slot0.lock  gpu1-slot0.lock  gpu0-slot1.lock  gpu1-slot1.lock  ...

A claim takes the GPU that the fewest live workers hold, then the lowest free slot on it.
So N workers on G GPUs get one GPU each when N <= G, and share them evenly (counts differ
by at most one) when N > G and the workers start one after another. The locks are
``flock`` locks, which the kernel releases when the holding process exits for any reason,
SIGKILL included, so a crashed worker's slot becomes free for its replacement.

NOTE: flock locks are shared only between processes that see the same file on one kernel.
A lock directory on NFS or another network file system may not enforce them, so keep it
on a local volume of the node.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

# Tests and CPU-only machines set this to a device count, so placement can be exercised
# without a GPU. The workers must then not use the claimed index as a real CUDA device.
PRETEND_GPUS_ENV = "HPO_PRETEND_GPUS"

# Serializes claims, so that two workers starting at the same moment count the same holders.
_CLAIM_LOCK_NAME = "claim.lock"
_SLOT_FILE_PATTERN = re.compile(r"^gpu(\d+)-slot(\d+)\.lock$")


def count_visible_gpus() -> int:
    """Return the number of GPUs this process can use, or the pretended count.

    Raises ValueError when ``HPO_PRETEND_GPUS`` is set to something other than a
    non-negative integer.
    """
    pretend = os.environ.get(PRETEND_GPUS_ENV)
    if pretend is not None and pretend.strip() != "":
        try:
            count = int(pretend)
        except ValueError:
            count = -1
        if count < 0:
            raise ValueError(
                f"{PRETEND_GPUS_ENV}={pretend!r} is invalid: expected a non-negative "
                "integer number of GPUs, or leave it unset to count the real ones"
            )
        return count

    import torch  # Imported here so that placement tests need no CUDA and load fast.

    if not torch.cuda.is_available():
        return 0
    return torch.cuda.device_count()


@dataclass
class GpuClaim:
    """A held slot on one GPU, released by ``release()``, by leaving a ``with`` block or
    by the end of the process.

    ``index`` is the GPU index in this process's CUDA numbering (``cuda:{index}``), and ``slot``
    is the position of this worker among the workers sharing that GPU.
    """

    index: int
    slot: int
    path: Path
    _fd: int | None

    @property
    def device(self) -> str:
        """The PyTorch device string of the claimed GPU."""
        return f"cuda:{self.index}"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Free the slot for another worker. Calling it again does nothing."""
        if self._fd is None:
            return
        # Closing the only descriptor of this open file description drops the flock.
        os.close(self._fd)
        self._fd = None
        logger.info("Released GPU %d slot %d (%s)", self.index, self.slot, self.path)

    def __enter__(self) -> GpuClaim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def claim_gpu(lock_dir: Path, n_gpus: int, *, owner: str | None = None) -> GpuClaim:
    """Claim the least-used GPU of the node and return the held claim.

    ``lock_dir`` is created if missing and must be shared by all workers of the node.
    ``owner`` is written into the slot file for operators who look at the directory
    (default: hostname and pid). Raises ValueError when ``n_gpus`` is below 1, and
    OSError when the directory cannot be created or written.

    The returned claim keeps an open file descriptor. A child process created by
    ``fork`` inherits it, so the slot stays taken until such children exit as well.
    """
    if n_gpus < 1:
        raise ValueError(
            f"n_gpus={n_gpus} is invalid: GPU placement needs at least one GPU, "
            "so run the worker on the CPU instead of claiming a GPU"
        )
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    owner = owner or f"{socket.gethostname()} pid {os.getpid()}"

    claim_fd = _open_lock_file(lock_dir / _CLAIM_LOCK_NAME)
    try:
        # Blocking: other claimers hold this lock only while they scan the directory.
        fcntl.flock(claim_fd, fcntl.LOCK_EX)
        held_slots = _find_held_slots(lock_dir, n_gpus)
        gpu = min(range(n_gpus), key=lambda index: (len(held_slots[index]), index))
        slot = _lowest_free_slot(held_slots[gpu])
        path = lock_dir / f"gpu{gpu}-slot{slot}.lock"
        slot_fd = _open_lock_file(path)
        try:
            # Non-blocking, because a holder that was not found free above means a bug
            # or a process that ignores the claim lock; failing loudly beats waiting.
            fcntl.flock(slot_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_owner(slot_fd, owner)
        except BaseException:
            os.close(slot_fd)
            raise
    finally:
        os.close(claim_fd)

    loads = ", ".join(f"gpu{index}: {len(held_slots[index])}" for index in range(n_gpus))
    logger.info(
        "Claimed GPU %d slot %d for %s (workers already holding each GPU: %s)",
        gpu, slot, owner, loads,
    )
    return GpuClaim(index=gpu, slot=slot, path=path, _fd=slot_fd)


def _open_lock_file(path: Path) -> int:
    # Mode 0o666 so that worker images running as different users can share the directory
    # (the umask still applies).
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def _find_held_slots(lock_dir: Path, n_gpus: int) -> dict[int, set[int]]:
    """Return, for each GPU index below ``n_gpus``, the slots that live processes hold.

    Must be called with the claim lock held: a probe briefly locks each free slot file,
    which another claimer scanning at the same time would count as held.
    """
    held: dict[int, set[int]] = {index: set() for index in range(n_gpus)}
    for entry in lock_dir.iterdir():
        match = _SLOT_FILE_PATTERN.match(entry.name)
        if match is None:
            continue
        gpu, slot = int(match.group(1)), int(match.group(2))
        if gpu >= n_gpus:
            # A file left by a node that had more GPUs is ignored, not deleted.
            continue
        if _is_locked(entry):
            held[gpu].add(slot)
    return held


def _is_locked(path: Path) -> bool:
    fd = _open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _lowest_free_slot(held: set[int]) -> int:
    slot = 0
    while slot in held:
        slot += 1
    return slot


def _write_owner(fd: int, owner: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{owner}\n".encode(), 0)
