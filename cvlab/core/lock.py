"""One writer per run directory: run.lock, its heartbeat, and the take-over of a stale lock.

run.lock holds {pid, host, started} of the process that writes the run directory. While it holds the lock that
process touches the file (its modification time is the heartbeat) every HEARTBEAT_SECONDS from a background
thread, and at every epoch end (RunDir.write_metrics). A lock written on this host is stale when its process no
longer exists, and never while it does, however old its heartbeat (a process stopped by Ctrl-Z or a laptop's
sleep still holds it). A lock from another host is stale when not touched for LOCK_STALE_SECONDS (an instance
stopped and restarted under another hostname leaves such a lock). The next start takes a stale lock over, with
one line naming the old holder; where the OS has file locks (fcntl.flock) the holder also holds one on run.lock,
so that of several starters only one can take a stale lock over (the heartbeat still serves other hosts); a holder whose lock was taken over meanwhile (`RunLock.check_owned`, before
every write) stops with one line and writes nothing more.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from pathlib import Path

from .errors import RunDirError, disk_error
from .units import duration

try:
    import fcntl
except ImportError:  # Windows: no flock; the exclusive create and the pid/heartbeat rules remain
    fcntl = None

HEARTBEAT_SECONDS = 30.0
LOCK_STALE_SECONDS = 300.0
_HELD_HERE: set[str] = set()  # the locks this process holds (real paths), whichever RunLock took them


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the one at `path` (not unlinked or replaced meanwhile)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def process_note(pid: int) -> str:
    """' (stopped: ...)' for a process of this host stopped by Ctrl-Z or SIGSTOP, else ''; Linux only."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError, ValueError):
        return ""
    if state not in ("T", "t"):
        return ""
    return f" (stopped: continue it with 'kill -CONT {pid}', or 'fg' in its shell, or end it with 'kill {pid}')"


class RunLock:
    """run.lock at `path`, guarding the run directory `folder` (named in the messages)."""

    def __init__(self, path: Path, folder: Path):
        self.path, self.folder = Path(path), Path(folder)
        self._lock_held = False
        self._os_lock: int | None = None  # the open run.lock this process holds an flock on
        self._heartbeat: _Heartbeat | None = None

    @property
    def held(self) -> bool:
        return self._lock_held

    def holder(self) -> dict | None:
        """The lock's content {pid, host, started} when a live holder has it, else None. A holder of this host is
        gone when its process no longer exists (however old its heartbeat); one of another host when its
        heartbeat (the lock's modification time) is more than LOCK_STALE_SECONDS old (or ahead)."""
        info = self._read()
        if info is None or self._stale(info):
            return None
        return info

    def _read(self) -> dict | None:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or damaged: treated as stale below
        return info if isinstance(info, dict) else {}

    def _stale(self, info: dict) -> bool:
        """This host's lock: its process is gone (or it names this process, which does not hold it: a restarted
        container reusing the pid). Another host's: no heartbeat for LOCK_STALE_SECONDS."""
        if info.get("host") != socket.gethostname():
            # a heartbeat further in the future than the limit: that host's clock is off by more than the rule
            # allows, and waiting for it to age would block for as long as the clocks disagree
            return abs(self._lock_age()) > LOCK_STALE_SECONDS
        try:
            pid = int(info.get("pid", -1))
        except (TypeError, ValueError):
            return True
        return pid <= 0 or not pid_alive(pid) or (pid == os.getpid() and self._key() not in _HELD_HERE)

    def _key(self) -> str:
        return os.path.realpath(self.path)

    def owner(self) -> dict | None:
        """The lock's content when it is not this process's (taken over, or removed: {}), else None."""
        info = self._read()
        if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            return None
        return info or {}

    def check_owned(self) -> None:
        """Nothing when this process holds the lock or never took it; a one-line RunDirError when it took it and
        the lock is now another's (taken over while this process was stopped longer than the stale limit, or
        deleted): the caller then writes nothing."""
        if not self._lock_held:
            return
        other = self.owner()
        if other is None:
            return
        now = (f"now held by process {other.get('pid')} on {other.get('host')} (since {other.get('started')})"
               if other else "now gone")
        raise RunDirError(f"stopped without writing: the lock {self.path} of this process ({os.getpid()}) is {now}; "
                          "it was taken over while this process did not run (stopped longer than "
                          f"{duration(LOCK_STALE_SECONDS)}), so the other process writes {self.folder} now")

    def acquire(self) -> None:
        """Take run.lock (pid, host, start time) and keep its heartbeat while held. A stale lock (see
        `holder`) is taken over with a warning naming the old holder; a live holder gets a one-line
        RunDirError naming it and saying when its lock would go stale. Where the OS offers file locks
        (fcntl.flock: Linux, macOS) the holder also keeps one on run.lock, which makes the take-over atomic:
        of several starters that find one stale lock, only the one holding the OS lock rewrites it."""
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if fcntl is None or not self._acquire_with_os_lock(me):
            self._acquire_by_exclusive_create(me)
        self._lock_held = True
        _HELD_HERE.add(self._key())
        self._heartbeat = _Heartbeat(self)

    def _acquire_with_os_lock(self, me: dict) -> bool:
        """Open (or create) run.lock and take an exclusive flock on it without waiting; then take the record over
        in place, under that lock. False when this file system has no flock (the caller falls back)."""
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise RunDirError(f"cannot write in {self.folder}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live process holds it
                os.close(fd)
                info = self._read_settled()
                if info is None:
                    continue  # released meanwhile
                raise RunDirError(self._in_use(info)) from None
            except OSError:  # no flock on this file system (some network ones)
                os.close(fd)
                return False
            try:
                if not _is_file_at(fd, self.path):  # the holder released (unlinked) it between open and flock
                    os.close(fd)
                    continue
                if os.fstat(fd).st_size > 0:  # an earlier holder's record
                    info = self._read()
                    if info and not self._stale(info):  # e.g. another host's, beating; or a process without flock
                        raise RunDirError(self._in_use(info))
                    self._take_over(info or {}, remove=False)
                self._write_record(fd, me)
            except BaseException:
                os.close(fd)
                raise
            self._os_lock = fd
            return True
        raise RunDirError(f"cannot take the lock {self.path}; another process keeps changing it")

    def _write_record(self, fd: int, me: dict) -> None:
        try:
            os.ftruncate(fd, 0)
            with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as f:
                f.write(json.dumps(me) + "\n")
        except OSError as exc:  # e.g. a disk already full: leave no empty lock for the next start to puzzle over
            self.path.unlink(missing_ok=True)
            raise RunDirError(f"cannot write the lock {self.path} ({disk_error(exc)}); make room, "
                              "then start again") from None

    def _read_settled(self) -> dict | None:
        """The record of a lock another process holds, waiting up to a second while it is being written."""
        for _ in range(10):
            info = self._read()
            if info != {}:
                return info
            time.sleep(0.1)
        return {}

    def _acquire_by_exclusive_create(self, me: dict) -> None:
        """Without OS file locks: create run.lock exclusively, removing a stale one first."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                info = self._read()
                if info is None:
                    continue  # released meanwhile
                if info == {} and self._lock_age() <= 10:
                    time.sleep(0.2)  # being written: look again
                    continue
                if info == {} or self._stale(info):
                    self._take_over(info)
                    continue
                raise RunDirError(self._in_use(info)) from None
            except OSError as exc:
                raise RunDirError(f"cannot write in {self.folder}: {exc.strerror or exc}") from None
            try:
                self._write_record(fd, me)
            finally:
                os.close(fd)
            return
        raise RunDirError(f"cannot take the lock {self.path}; another process keeps changing it")

    def _take_over(self, info: dict, remove: bool = True) -> None:
        """One line naming a stale lock's holder and why it counts as gone; the lock is removed (`remove`), or
        rewritten in place by the caller, which holds the OS lock on it."""
        age = self._lock_age()
        if not info:
            why = "damaged"
        elif info.get("host") != socket.gethostname() and age < 0:
            why = (f"its heartbeat is {duration(-age)} in the future (that host's clock is ahead by more than the "
                   f"{duration(LOCK_STALE_SECONDS)} limit)")
        elif info.get("host") != socket.gethostname():
            why = f"no heartbeat for {duration(age)}, more than the {duration(LOCK_STALE_SECONDS)} limit"
        elif info.get("pid") == os.getpid():
            why = "its pid is now this process's (a restart reused it)"
        else:
            why = "that process no longer exists"
        holder = f"process {info.get('pid')} on {info.get('host')} (since {info.get('started')})" if info else "?"
        warnings.warn(f"taking over the stale lock {self.path} of {holder}: {why}", stacklevel=6)
        if remove:
            self.path.unlink(missing_ok=True)

    def _in_use(self, info: dict) -> str:
        """The one line for a live holder: who, and when its lock goes stale if it stops beating."""
        holder = f"process {info.get('pid')} on {info.get('host')} (since {info.get('started')})"
        if info.get("host") == socket.gethostname():  # a live process here: the lock goes when it ends
            try:
                note = process_note(int(info.get("pid")))
            except (TypeError, ValueError):
                note = ""
            return f"{self.folder} is in use by {holder}{note}; wait for it to finish, or stop it"
        age = self._lock_age()
        stale_at = time.strftime("%H:%M:%S", time.localtime(time.time() - age + LOCK_STALE_SECONDS))
        beat = f"{duration(age)} ago" if age >= 0 else f"{duration(-age)} in the future by this host's clock"
        return (f"{self.folder} is in use by {holder}, last heartbeat {beat}; wait for it to finish "
                f"(if that process is gone, its lock counts as stale at {stale_at}, {duration(LOCK_STALE_SECONDS)} "
                "after its last heartbeat, and the next start after that takes it over)")

    def _lock_age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return 0.0

    def beat(self) -> None:
        """Touch run.lock (its modification time is the heartbeat) when this RunDir holds it and it is still
        this process's; a failure to touch it is not an error (the next beat tries again)."""
        if not self._lock_held:
            return
        info = self._read()
        if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._lock_held:
            info = self._read()
            if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)  # before the OS lock goes: a starter waiting on it sees a new file
            _HELD_HERE.discard(self._key())
            self._lock_held = False
        if self._os_lock is not None:
            os.close(self._os_lock)
            self._os_lock = None


class _Heartbeat:
    """A daemon thread that touches a run lock every HEARTBEAT_SECONDS until stopped."""

    def __init__(self, lock: RunLock, interval: float | None = None):
        self._stop = threading.Event()
        self._interval = HEARTBEAT_SECONDS if interval is None else interval
        self._thread = threading.Thread(target=self._beat, args=(lock,), name=f"heartbeat {lock.path}", daemon=True)
        self._thread.start()

    def _beat(self, lock: RunLock) -> None:
        while not self._stop.wait(self._interval):
            lock.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
