"""The owner of a run directory: one ``vlm-swap train`` process per run directory, for its whole life.

Rank 0 holds an exclusive ``flock`` on ``RUN/.vlm-swap.lock`` (the file names its PID and host) from
before it checks the directory until the run ends; a second process on the same directory fails in
one line naming the holder. The kernel drops a ``flock`` when its holder exits, however it exits
(``kill -9`` included; forked children close their copy of the descriptor, so orphaned dataloader
workers do not keep it), so the lock file a killed run leaves behind is stale and never blocks a
``--resume``: the next process locks it and writes its own PID. A run that ends normally or fails
removes the file, and the directory too when it created it and nothing else was written.

Under torchrun / accelerate only rank 0 takes the lock; the other ranks wait for rank 0's verdict
(lock and checks) and fail with it, so no rank starts work on a directory it does not own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..checkpoints.guards import check_not_an_input
from ..errors import VlmSwapError

LOCK_NAME = ".vlm-swap.lock"
#: lock descriptors this process holds; a forked child (a dataloader worker, an indexing process) closes its
#: copies at once, so a lock never outlives a killed holder in its orphaned children (a flock stays held while
#: any descriptor of its open file is open); spawned processes never get them (descriptors are not inheritable)
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunDirInUse(VlmSwapError):
    """Another process holds the lock of the run directory."""


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def hold_lock(run: Path) -> Iterator[Path]:
    """Create ``run`` if needed and hold its lock for the block; yield the lock file's path."""
    run = Path(run)
    created = [p for p in (run, *run.parents) if not os.path.lexists(p)]  # deepest first
    path = run / LOCK_NAME
    fd = _acquire(run, path)
    _HELD.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        # removed while still held: a process that opened the old file retries on a new one (see _acquire)
        with contextlib.suppress(OSError):
            os.unlink(path)
        _HELD.discard(fd)
        os.close(fd)
        for p in created:  # a run that wrote nothing leaves nothing
            try:
                p.rmdir()
            except OSError:
                break


def _acquire(run: Path, path: Path) -> int:
    while True:
        try:
            run.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the previous holder removed the empty directory meanwhile
            continue
        except OSError as exc:
            raise VlmSwapError(f"cannot create the run directory {run}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 256, 0).decode(errors="replace").split()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise VlmSwapError(f"cannot lock {path}: {exc.strerror or exc}") from exc
            who = f"process {' on '.join(holder[:2])}" if holder else "a process that has not yet written its PID"
            raise RunDirInUse(
                f"run directory {run} is in use by {who} (another vlm-swap train); "
                "wait for it to end or stop it, or choose another --out"
            ) from None
        try:  # the holder we waited on may have removed this file as it ended: lock the one now in place
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def own_run_dir(
    run: Path,
    *,
    inputs: Iterable[str | Path | None] = (),
    check: Callable[[], None] = lambda: None,
    join: Callable[[], object] = lambda: None,
) -> Iterator[None]:
    """Own ``run`` for the block: rank 0 refuses a run directory that is one of ``inputs``, takes the
    lock, then runs ``check`` (which sees the directory as no other process changes it). With several
    processes, ``join`` sets up the process group the run uses, and every rank gets rank 0's verdict."""
    with contextlib.ExitStack() as stack:
        refusal: BaseException | None = None
        if rank() == 0:
            try:
                check_not_an_input(run, inputs)
                stack.enter_context(hold_lock(run))
                check()
            except BaseException as exc:  # every rank must hear of it, whatever it is
                refusal = exc
        if world_size() > 1:
            refusal = _verdict_of_rank_zero(refusal, join)
        if refusal is not None:
            raise refusal
        yield


def _verdict_of_rank_zero(refusal: BaseException | None, join: Callable[[], object]) -> BaseException | None:
    import torch.distributed as dist

    join()
    message = [str(refusal) or type(refusal).__name__ if refusal is not None else None]
    dist.broadcast_object_list(message, src=0)
    if rank() == 0 or message[0] is None:
        return refusal
    return VlmSwapError(message[0])
