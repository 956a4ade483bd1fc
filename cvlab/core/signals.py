"""SIGTERM handled like Ctrl-C.

Platforms stop jobs with SIGTERM: ModelArts (stopped by hand or by its auto-stop timer), Kubernetes and Slurm
send it, wait a grace period, then send SIGKILL. Python's default for SIGTERM ends the process at once, leaving
no status and a lock behind. While `sigterm_as_interrupt()` is active, SIGTERM raises `errors.Terminated`, a
KeyboardInterrupt: whatever handles Ctrl-C (the run directory's status, its lock, the resume hint) handles
SIGTERM the same way, and the CLI exits with 143 instead of 130.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from .errors import Terminated


def _raise_terminated(signum, frame) -> None:
    # Once is enough: a repeated SIGTERM (torchrun forwards one to workers that may have received their own,
    # a scheduler may send several) must not break the clean-up the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated in the main thread (a no-op in other threads, where Python
    cannot install signal handlers, and inside an outer block). The previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is _raise_terminated:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def stop_reason(exc: BaseException) -> str:
    """How a KeyboardInterrupt came about, for messages: 'SIGTERM' or 'Ctrl-C (SIGINT)'."""
    return "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C (SIGINT)"
