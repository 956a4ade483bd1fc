"""Exceptions that map to exit codes: UsageError (and its subclasses) -> 2, Diverged -> 3, Terminated -> 143."""
from __future__ import annotations

import errno


class UsageError(Exception):
    """Bad usage or bad input: the CLI prints the message on one line and exits with code 2."""


class ConfigError(UsageError):
    """A config field is unknown, of the wrong type, or out of range."""


class DataError(UsageError):
    """The data set is missing, incomplete or malformed."""


class RunDirError(UsageError):
    """A run directory cannot be created, resumed or read."""


class Diverged(Exception):
    """Training met a non-finite loss and stopped; the run directory keeps its last good epoch.
    The CLI prints the message on one line and exits with code 3."""

    exit_code = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (see core.signals): a KeyboardInterrupt, so every path that handles Ctrl-C (the run's
    status, its lock, the resume hint) handles it too. The CLI exits with code 143 (128 + 15), not 130."""

    exit_code = 143


class NonFiniteLoss(Exception):
    """Raised by `engine.run_epoch` when a training loss was NaN or infinite."""

    def __init__(self, epoch: int, step: int, steps: int):
        super().__init__(f"non-finite loss at epoch {epoch}, step {step}/{steps}")
        self.epoch, self.step, self.steps = epoch, step, steps


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type's name when it
    has none: what a one-line error quotes of the cause."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__


def cause(exc: BaseException) -> str:
    """'Type: first line' of an exception, or just 'Type' when it has no message (never 'EOFError: EOFError')."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {first_line(exc)}" if text else type(exc).__name__


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)  # the disk, not the input


def is_disk_error(exc: BaseException) -> bool:
    """An OSError that says the disk cannot take a write (full, over quota, read-only, failing)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def disk_error(exc: OSError) -> str:
    """A short reason for a failed write, e.g. 'No space left on device'."""
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return exc.strerror or str(exc)
