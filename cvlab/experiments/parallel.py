"""Independent training runs placed on several devices at once: one process per run, one run per device.

    slots = device_slots(devices="cuda:0,cuda:1")   # or device_slots(parallel=4, device="cuda"), or "cpu" x N
    run_jobs(jobs, slots, log_dir)                  # each job: (label, config, run directory, resume)

Each run is `engine.fit` in a fresh (spawned) process that sees only its own accelerator
(CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES), or, on the CPU, an equal share of the cores as
intra-op threads. A run's output goes to LOG_DIR/<label>.log; the run directories are what they would
be if the runs were made one after another.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable

from ..core.errors import Diverged, Terminated, UsageError

VISIBLE = {"cuda": "CUDA_VISIBLE_DEVICES", "npu": "ASCEND_RT_VISIBLE_DEVICES"}


@dataclass(frozen=True)
class Slot:
    """Where one run at a time executes: the config's device type, environment for its process, threads."""

    name: str
    device: str
    env: dict = field(default_factory=dict)
    threads: int | None = None


@dataclass
class Job:
    label: str
    config: object  # core.config.Config
    run_dir: Path
    resume: bool


def device_slots(devices: str | None = None, parallel: int | None = None, device: str = "auto") -> list[Slot]:
    """The slots named by `devices` ("cuda:0,cuda:1", "npu:0,npu:1", "cpu,cpu") or `parallel` N slots of
    `device` (accelerators 0..N-1, or N CPU processes). CPU slots share the cores equally."""
    if devices:
        names = [d.strip() for d in devices.split(",") if d.strip()]
        if parallel and parallel != len(names):
            raise UsageError(f"--parallel {parallel} and --devices {devices} ({len(names)} device(s)) disagree; "
                             "--devices alone trains one run per listed device at a time")
    elif parallel:
        kind = device if device != "auto" else _auto_kind()
        names = [kind if kind == "cpu" else f"{kind}:{i}" for i in range(parallel)]
    else:
        return []
    cpu_slots = sum(1 for n in names if n == "cpu")
    threads = max(1, (os.cpu_count() or 1) // cpu_slots) if cpu_slots else None
    slots = []
    for name in names:
        kind, _, index = name.partition(":")
        if kind == "cpu" and not index:
            slots.append(Slot(name, "cpu", {}, threads))
        elif kind in VISIBLE and index.isdigit():
            slots.append(Slot(name, kind, {VISIBLE[kind]: index}))
        else:
            raise UsageError(f"cannot place runs on {name!r}: use cpu, cuda:N or npu:N (e.g. --devices cuda:0,cuda:1)")
    if len({s.name for s in slots if s.device != "cpu"}) != sum(1 for s in slots if s.device != "cpu"):
        raise UsageError(f"a device is listed twice in {devices!r}")
    for slot in slots:
        _check_present(slot)
    return slots


def _check_present(slot: Slot) -> None:
    """Refuse (one line) a slot naming an accelerator this machine does not have: its process would
    otherwise see no device at all."""
    from ..core.device import device_count

    if slot.device == "cpu":
        return
    count, index = device_count(slot.device), int(slot.env[VISIBLE[slot.device]])
    if index >= count:
        have = f"{slot.device}:0 to {slot.device}:{count - 1}" if count else f"no {slot.device} device"
        raise UsageError(f"cannot place runs on {slot.name}: this machine has {have}")


def _auto_kind() -> str:
    from ..core.device import resolve_device
    return resolve_device("auto").type


def _run_one(config: dict, run_dir: str, resume: bool, env: dict, threads: int | None, log_path: str) -> None:
    """The body of a run's process: its device environment and threads, then fit, output into the log."""
    import contextlib
    import sys
    import traceback

    os.environ.update(env)
    with open(log_path, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        try:
            import torch

            from ..core.config import from_dict
            from ..core.engine import fit
            if threads:
                torch.set_num_threads(threads)
            fit(from_dict(config), run_dir, resume=resume, log=lambda s: print(s, flush=True))
        except UsageError as exc:
            print(f"cvlab: error: {exc}", flush=True)
            sys.exit(2)
        except Diverged as exc:  # kept as it is, like a diverged run of a sequential ablation
            print(f"cvlab: error: {exc}", flush=True)
            sys.exit(Diverged.exit_code)
        except KeyboardInterrupt as exc:  # Ctrl-C 130, SIGTERM (errors.Terminated) 143
            sys.exit(getattr(exc, "exit_code", 130))
        except BaseException:
            traceback.print_exc()
            sys.exit(1)


def run_jobs(jobs: list[Job], slots: list[Slot], log_dir: str | Path, log: Callable[[str], None] = print) -> None:
    """Run every job, at most one per slot at a time, in order of the list. Raises RuntimeError naming the
    runs that failed (after the others have finished) and their logs."""
    from ..core.config import from_dict

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited CUDA state or threads
    queue, free, running, failed = list(jobs), list(range(len(slots))), {}, []
    try:
        while queue or running:
            while queue and free:
                job, slot = queue.pop(0), slots[free.pop(0)]
                config = from_dict({**job.config.to_dict(), "device": slot.device, "progress": False})
                log_path = log_dir / f"{job.label}.log"
                process = spawn.Process(target=_run_one, name=job.label, daemon=False,
                                        args=(config.to_dict(), str(job.run_dir), job.resume, slot.env,
                                              slot.threads, str(log_path)))
                process.start()
                running[process.sentinel] = (process, job, slots.index(slot), time.perf_counter(), log_path)
                log(f"started {job.label} on {slot.name} (log: {log_path})")
            for sentinel in wait(list(running)):
                process, job, index, start, log_path = running.pop(sentinel)
                process.join()
                free.append(index)
                seconds = time.perf_counter() - start
                if process.exitcode == 0:
                    log(f"finished {job.label} on {slots[index].name} in {seconds:.0f} s")
                elif process.exitcode == Diverged.exit_code:
                    log(f"{job.label} diverged on {slots[index].name}; its run directory is kept as it is ({log_path})")
                else:
                    failed.append(f"{job.label} (exit {process.exitcode}, log {log_path})")
                    log(f"FAILED {job.label} on {slots[index].name}: exit code {process.exitcode}, see {log_path}")
    except KeyboardInterrupt as exc:
        # Ctrl-C reached them too; a SIGTERM may have reached this process only: pass it on. Then give them
        # time to save their state (status interrupted, lock released).
        for process, *_ in running.values():
            if isinstance(exc, Terminated):
                process.terminate()
        for process, *_ in running.values():
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        raise
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed: {'; '.join(failed)}")
