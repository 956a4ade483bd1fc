"""The report: run notebooks/0*.ipynb in order with papermill, then export each to HTML (and PDF).

    python -m cvlab report --profile smoke                      # synthetic data, CPU: checks every notebook
    python -m cvlab report                                      # profile "full": real data, the handout's settings
    python -m cvlab report -p DATA_ROOT /data -p SUBSET 5000 -p EPOCHS 3 -p DEVICE cpu
    python -m cvlab report --only 01 --no-input --log-output    # one notebook, code hidden, live output

Parameters come from a YAML profile (cvlab/profiles/*.yaml, or a file): `common` values go to every
notebook that declares them in its `parameters` cell, `notebooks.<name>` values to that notebook only;
`-p KEY VALUE` overrides both (`-p 01_baseline.KEY VALUE` for one notebook). Executed notebooks and
exports land in reports/<profile>/; a failing notebook is kept there as executed so far.
"""
from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import threading
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..core.config import FIELDS, parse_text, parse_value
from ..core.errors import ConfigError, Terminated, UsageError, disk_error, is_disk_error
from ..core.paths import REPO_ROOT
from ..core.signals import stop_reason
from .publish import PRINT_FROM_BROWSER, export_html, export_pdf, pdf_route

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class NotebookFailed(Exception):
    """A notebook raised in a cell (or its kernel died); the message names the cell and the error."""


class NotebookStopped(Exception):
    """SIGTERM or Ctrl-C stopped the report while a notebook ran (see `stops_reach_the_kernel`); the message
    says where, where the partial notebook is, and how to continue. `exit_code`: 143 (SIGTERM) or 130."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------------------- profiles and parameters

@dataclass
class Profile:
    name: str
    description: str
    common: dict[str, Any]
    notebooks: dict[str, dict[str, Any]]


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> Profile:
    """A profile shipped with cvlab (by name) or a YAML file (by path)."""
    import yaml

    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = PROFILES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UsageError(f"unknown profile {name_or_path!r}; choose from {', '.join(available_profiles())} "
                             "or give a .yaml file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"profile {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict) or not set(values) <= {"description", "common", "notebooks"}:
        raise UsageError(f"profile {path} must be a mapping with description, common and notebooks")
    common, notebooks = values.get("common") or {}, values.get("notebooks") or {}
    if not isinstance(common, dict) or not isinstance(notebooks, dict) \
            or not all(isinstance(v, dict) for v in notebooks.values()):
        raise UsageError(f"profile {path}: common must map names to values, notebooks names to such mappings")
    return Profile(path.stem, str(values.get("description", "")), common, notebooks)


def find_notebooks(folder: Path, only: list[str] | None = None) -> list[Path]:
    """notebooks/0*.ipynb in name order; `only` keeps those whose name starts with one of its entries."""
    if not folder.is_dir():
        raise UsageError(f"no notebooks folder at {folder}; run from the repository root or pass --notebooks DIR")
    found = sorted(folder.glob("0*.ipynb"))
    if only:
        found = [p for p in found if any(p.stem.startswith(o) for o in only)]
    if not found:
        raise UsageError(f"no notebooks matching 0*.ipynb{' and --only ' + ', '.join(only) if only else ''} in {folder}")
    return found


def read_parameters(path: Path) -> dict[str, Any]:
    """Names and values of the notebook's one `parameters` cell, which must hold only `NAME = literal`
    lines (papermill's own inspection silently skips lines whose comment holds '=')."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise UsageError(f"{path.name}: expected one cell tagged 'parameters', found {len(cells)}")
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as exc:
        raise UsageError(f"{path.name}: parameters cell line {exc.lineno}: {exc.msg}") from None
    values: dict[str, Any] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) else None
        try:
            if not isinstance(target, ast.Name) or node.value is None:
                raise ValueError
            values[target.id] = ast.literal_eval(node.value)
        except ValueError:
            raise UsageError(f"{path.name}: parameters cell line {node.lineno} is not NAME = literal") from None
    return values


def coerce(key: str, text: str, default: Any) -> Any:
    """Convert a `-p` value with the rules of a config's `--set`: a parameter named after a Config
    field (EPOCHS -> epochs) is parsed as that field (type, choices, range); any other bool, int,
    float or str parameter takes the type of its default (config.parse_text); the rest is read as YAML."""
    import yaml

    try:
        if key.lower() in FIELDS and isinstance(default, FIELDS[key.lower()].type):
            return parse_value(key.lower(), text)
        if isinstance(default, (bool, int, float, str)):
            return parse_text(text, type(default), key)
    except ConfigError as exc:
        raise UsageError(f"-p {key}: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def resolve_parameters(notebooks: list[Path], profile: Profile, overrides: list[tuple[str, str]],
                       warn: Callable[[str], None]) -> dict[Path, dict[str, Any]]:
    """The parameters each notebook gets: profile common + per-notebook, then `-p` overrides."""
    declared = {nb: read_parameters(nb) for nb in notebooks}
    result: dict[Path, dict[str, Any]] = {}
    for nb in notebooks:
        params = {k: v for k, v in profile.common.items() if k in declared[nb]}
        own = profile.notebooks.get(nb.stem, {})
        unknown = sorted(set(own) - set(declared[nb]))
        if unknown:
            warn(f"profile {profile.name} sets {', '.join(unknown)} for {nb.name}, which does not declare them; "
                 "ignored")
        params.update({k: v for k, v in own.items() if k in declared[nb]})
        result[nb] = params
    for key, text in overrides:
        scope, _, name = key.rpartition(".")
        targets = [nb for nb in notebooks if name in declared[nb] and (not scope or nb.stem.startswith(scope))]
        if not targets:
            known = sorted({k for nb in notebooks for k in declared[nb]})
            raise UsageError(f"-p {key}: no notebook{' ' + scope + '*' if scope else ''} declares {name}; "
                             f"parameters: {', '.join(known)}")
        for nb in targets:
            result[nb][name] = coerce(name, text, declared[nb][name])
    for params in result.values():
        absolutize_data_root(params, Path.cwd())
    return result


def absolutize_data_root(params: dict[str, Any], cwd: Path) -> None:
    """A relative DATA_ROOT means relative to where the command was typed, not to notebooks/ (where
    papermill runs the kernel): make it absolute. Empty stays empty (the one rule in core.paths decides)."""
    value = params.get("DATA_ROOT")
    if isinstance(value, str) and value:
        params["DATA_ROOT"] = str((cwd / Path(value).expanduser()).resolve())


# ---------------------------------------------------------------------------- kernel

def _runs_this_interpreter(argv0: str) -> bool:
    # jupyter_client starts a spec whose argv[0] is "python", "python3" or "python3.X" with the
    # launching interpreter (sys.executable), so those count as this interpreter too.
    names = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    if argv0 in names:
        return True
    try:
        return Path(argv0).resolve() == Path(sys.executable).resolve()
    except OSError:
        return False


def kernel_name_for_this_python() -> str:
    """A kernelspec name derived from this interpreter's prefix: stable for one venv/conda env."""
    import hashlib
    digest = hashlib.sha1(str(Path(sys.prefix).resolve()).encode()).hexdigest()[:8]
    return f"cvlab-py{sys.version_info[0]}{sys.version_info[1]}-{digest}"


def ensure_kernel(log: Callable[[str], None] = print) -> str:
    """The name of a kernelspec that runs this interpreter, registering one (--user) when none does."""
    try:
        import ipykernel  # noqa: F401
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:
        raise UsageError(f"ipykernel is not installed for {sys.executable}; "
                         "pip install 'cvlab[report]' (or pip install ipykernel papermill nbconvert)") from None
    specs = KernelSpecManager().get_all_specs()
    matching = [name for name, s in specs.items()
                if s.get("spec", {}).get("language", "").lower() == "python"
                and s.get("spec", {}).get("argv") and _runs_this_interpreter(s["spec"]["argv"][0])]
    for preferred in (kernel_name_for_this_python(), "python3"):
        if preferred in matching:
            return preferred
    if matching:
        return sorted(matching)[0]
    name = kernel_name_for_this_python()
    log(f"registering a Jupyter kernel {name!r} for {sys.executable}")
    cmd = [sys.executable, "-m", "ipykernel", "install", "--user", "--name", name,
           "--display-name", f"Python {sys.version_info[0]}.{sys.version_info[1]} ({Path(sys.prefix).name}, cvlab)"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise UsageError(f"could not register a Jupyter kernel: {(done.stderr or done.stdout).strip().splitlines()[-1]}")
    return name


def check_kernel(name: str) -> str:
    """`name` when a Jupyter kernelspec of that name is installed; UsageError (one line) naming those that are."""
    from jupyter_client.kernelspec import KernelSpecManager

    installed = sorted(KernelSpecManager().find_kernel_specs())
    if name not in installed:
        raise UsageError(f"no Jupyter kernel named {name!r}; installed: {', '.join(installed) or 'none'} "
                         "(or leave out --kernel to use one running this Python)")
    return name


def check_output_dir(out: Path) -> Path:
    """Refuse (one line) an output folder that is a file or lies under one, before any work."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is a file" if folder == out else f"lies under {folder}, a file"
                raise UsageError(f"--out {out} {where}, not a folder; choose another --out")
            return out
    return out


def make_output_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out}: {exc.strerror or exc}; choose another --out") from None
    return out


@contextlib.contextmanager
def kernel_environment(repo_root: Path) -> Iterator[None]:
    """Kernels start with this checkout first on PYTHONPATH, so they import the cvlab that runs them, and with
    CVLAB_REPORT=1, so notebooks know no one is watching (no progress bars or live plots in the executed copy)."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PYDEVD_DISABLE_FILE_VALIDATION", "CVLAB_REPORT")}
    paths = [str(repo_root)] + [p for p in (saved["PYTHONPATH"] or "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # silences the debugger's frozen-modules warning
    os.environ["CVLAB_REPORT"] = "1"  # notebook.interactive() is False in these kernels
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------------------- execution

def short_error(exc: Exception, notebook: Path, output: Path) -> str:
    """papermill's error shortened to the cell and the exception line."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        first = next((ln.strip() for ln in (exc.source or "").splitlines() if ln.strip()), "")
        evalue = ANSI.sub("", str(exc.evalue or "")).strip().splitlines()
        where = f"cell In [{exc.exec_count}]" if exc.exec_count else f"cell {exc.cell_index + 1}"
        return (f"{notebook.name} failed in {where} (cell {exc.cell_index + 1} of the executed notebook, "
                f"starting {first[:60]!r}): {exc.ename}: {evalue[0] if evalue else ''}; "
                f"partial notebook kept at {output}")
    text = ANSI.sub("", str(exc)).strip().splitlines()
    return f"{notebook.name} failed: {type(exc).__name__}: {text[0] if text else ''}; partial notebook kept at {output}"


def execute(notebook: Path, output: Path, parameters: dict[str, Any], kernel: str, log_output: bool,
            timeout: float | None = None) -> None:
    """Run `notebook` with papermill (cwd = its folder), writing `output` after every cell. SIGTERM or Ctrl-C
    meanwhile stops the kernel's work as it would stop it in a terminal (see `stops_reach_the_kernel`) and
    raises NotebookStopped once papermill has saved the partial notebook."""
    import papermill

    kernels: list = []
    with stops_reach_the_kernel(kernels) as received, notebook_saved_atomically(output):
        try:
            papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=kernel,
                                       language="python",  # also for notebooks without kernelspec metadata
                                       cwd=str(notebook.parent), log_output=log_output,
                                       progress_bar=sys.stderr.isatty() and not log_output,
                                       request_save_on_cell_execute=True, execution_timeout=timeout,
                                       kernel_manager_class=_tracked_kernel_manager(kernels),
                                       # the kernel's own log (e.g. ipykernel 7's note that a loopback kernel
                                       # runs unencrypted over TCP) is noise on the report's stderr
                                       extra_arguments=["--IPKernelApp.log_level=ERROR"])
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # papermill, nbclient and kernel errors all end the report here
            if received:
                raise stopped(received[0], exc, notebook, output) from None
            if is_disk_error(exc):
                kept = "its last whole save is kept" if output.exists() else "nothing of it was written"
                raise UsageError(f"cannot write {output} ({disk_error(exc)}) while {notebook.name} ran; {kept}; "
                                 "make room, then run the same command again") from None
            raise NotebookFailed(short_error(exc, notebook, output)) from None
    if received:  # the notebook ended before the stop reached a cell: stop before the next one
        raise stopped(received[0], None, notebook, output)


@contextlib.contextmanager
def notebook_saved_atomically(output: Path) -> Iterator[None]:
    """While papermill runs, its saves of `output` (after every cell) go to a temp file renamed into place
    (core.runs.atomic_write_text): a full disk leaves the last whole save, never truncated JSON. papermill takes the
    newest registered handler whose prefix the path starts with: this one is registered for `output` alone."""
    from papermill.iorw import papermill_io

    from ..core.runs import atomic_write_text

    class AtomicNotebookWriter:
        def read(self, path: str) -> str:
            return Path(path).read_text(encoding="utf-8")

        def write(self, buf: str, path: str) -> None:
            atomic_write_text(Path(path), buf)

        def listdir(self, path: str) -> list[str]:
            return [str(p) for p in Path(path).iterdir()]

        def pretty_path(self, path: str) -> str:
            return path

    entry = (str(output), AtomicNotebookWriter())
    papermill_io.register(*entry)
    try:
        yield
    finally:
        handlers = getattr(papermill_io, "_handlers", [])
        if entry in handlers:
            handlers.remove(entry)


def stopped(signum: int, exc: Exception | None, notebook: Path, output: Path) -> NotebookStopped:
    """NotebookStopped for a stop by `signum` that ended `notebook` with `exc` (the cell's error)."""
    from papermill.exceptions import PapermillExecutionError

    reason, code = ("SIGTERM", Terminated.exit_code) if signum == signal.SIGTERM else ("Ctrl-C (SIGINT)", 130)
    where = ""
    if isinstance(exc, PapermillExecutionError):
        where = f" in cell In [{exc.exec_count}]" if exc.exec_count else f" in cell {exc.cell_index + 1}"
    return NotebookStopped(f"{notebook.name} stopped by {reason}{where}; partial notebook kept at {output}; "
                           "run the same command again to continue (each training run resumes from its last "
                           "finished epoch)", code)


def _tracked_kernel_manager(kernels: list):
    """A kernel manager class whose instances append themselves to `kernels`, so that a stop can reach them.
    Asynchronous, as nbclient's default is: with a blocking one nbclient waits for a cell's reply in a call that
    blocks its event loop, so a kernel that a SIGTERM ended (and never replies) is never noticed and the report
    hangs on the kernel's zombie; with this one nbclient checks every second that the kernel still lives."""
    from jupyter_client.manager import AsyncKernelManager

    class TrackedKernelManager(AsyncKernelManager):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            kernels.append(self)

    return TrackedKernelManager


def _kernel_process(km):
    """The running kernel's process group (or pid) as ("group"|"process", id), or None when it has ended."""
    provisioner = getattr(km, "provisioner", None)
    process = getattr(provisioner, "process", None)
    if process is None or process.poll() is not None:
        return None
    pgid = getattr(provisioner, "pgid", None)
    return ("group", pgid) if pgid else ("process", process.pid)


@contextlib.contextmanager
def stops_reach_the_kernel(kernels: list) -> Iterator[list[int]]:
    """While a notebook runs, pass SIGTERM and Ctrl-C (SIGINT) on to its kernel (a process group of its own,
    which neither signal reaches by itself): cvlab's `fit` in a cell then stops as it does in a terminal (status
    interrupted, lock released, the resume line in the cell's output) and papermill saves the partial notebook.
    Yields the list of signals received. A second signal, or one while no kernel runs, stops the report at once
    (Terminated or KeyboardInterrupt). Only in the main thread; elsewhere nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def forward(signum, frame) -> None:
        targets = [t for t in map(_kernel_process, kernels) if t is not None]
        if received or not targets:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        received.append(signum)
        # the kernel's ZMQ streams may close under tornado while it stops, which logs a traceback now and then:
        # the one line the report prints says what happened
        quiet.setLevel(logging.CRITICAL)
        for kind, ident in targets:
            try:
                os.killpg(ident, signum) if kind == "group" else os.kill(ident, signum)
            except OSError:  # it ended meanwhile
                pass

    def not_the_stopped_kernel(record: logging.LogRecord) -> bool:
        # nbclient logs "Kernel died ..." (to papermill's logger) when a SIGTERM ended the kernel outright
        return not (received and record.getMessage().startswith("Kernel died"))

    quiet = logging.getLogger("tornado")
    level = quiet.level
    papermill_log = logging.getLogger("papermill")
    papermill_log.addFilter(not_the_stopped_kernel)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, forward)
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        quiet.setLevel(level)
        papermill_log.removeFilter(not_the_stopped_kernel)


# ---------------------------------------------------------------------------- the report

@dataclass
class NotebookResult:
    notebook: str
    executed: str
    parameters: dict[str, Any]
    status: str = "not run"
    seconds: float = 0.0
    estimate_seconds: float | None = None    # the plan's estimate, printed before the first notebook
    revised_seconds: float | None = None     # that estimate revised by the notebooks before this one
    exports: list[str] = field(default_factory=list)
    error: str | None = None


def require_report_packages() -> None:
    import importlib.util
    missing = [m for m in ("papermill", "nbconvert", "nbformat", "ipykernel") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"{', '.join(missing)} not installed for {sys.executable}; pip install 'cvlab[report]'")


def default_notebooks_dir() -> Path:
    here = Path.cwd() / "notebooks"
    return here if here.is_dir() else REPO_ROOT / "notebooks"


def run_report(profile_name: str = "full", overrides: list[tuple[str, str]] | None = None,
               notebooks_dir: Path | None = None, out: Path | None = None, only: list[str] | None = None,
               log_output: bool = False, no_input: bool = False, pdf: bool = True, kernel: str | None = None,
               timeout: float | None = None, log: Callable[[str], None] = print,
               estimate: bool = True, student=None, price_per_hour: float | None = None,
               auto_stop_hours: float | None = None) -> list[NotebookResult]:
    """Print what each notebook will train with an estimated time (`estimate`), execute the notebooks in
    order and export each; raise NotebookFailed at the first failing one. With `student` (a
    submission.Student), also write the submission document (submission.html / .pdf) from them."""
    warn = lambda text: log(f"warning: {text}")  # noqa: E731
    require_report_packages()
    profile = load_profile(profile_name)
    folder = (notebooks_dir or default_notebooks_dir()).resolve()
    notebooks = find_notebooks(folder, only)
    params = resolve_parameters(notebooks, profile, overrides or [], warn)
    out = check_output_dir((out or folder.parent / "reports" / profile.name).resolve())
    kernel = check_kernel(kernel) if kernel else ensure_kernel(log)
    make_output_dir(out)
    if log_output:  # papermill logs cell output to its logger; show that logger only
        logger = logging.getLogger("papermill")
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    log(f"report: profile {profile.name} ({profile.description}); {len(notebooks)} notebook(s) from {folder}; "
        f"kernel {kernel}; output {out}")
    pdf = say_missing_tools(pdf, log)
    planned = {}
    if estimate:
        with kernel_environment(REPO_ROOT):  # the warm-up's child process imports cvlab as the kernels will
            planned = print_plan({nb.stem: params[nb] for nb in notebooks}, log, price_per_hour, auto_stop_hours,
                                 folder)
    results: list[NotebookResult] = []
    manifest = lambda: write_manifest(out / "report.json", profile, results, no_input, folder)  # noqa: E731
    try:
        with kernel_environment(REPO_ROOT):
            for nb in notebooks:
                executed = out / nb.name
                result = NotebookResult(nb.name, str(executed), params[nb])
                results.append(result)
                revise_estimate(result, nb.stem, planned, results[:-1], log)
                log(f"{nb.stem}: running with {json.dumps(params[nb], ensure_ascii=False)}")
                start = time.perf_counter()
                try:
                    execute(nb, executed, params[nb], kernel, log_output, timeout)
                except NotebookFailed as exc:
                    result.status, result.error = "failed", str(exc)
                    raise
                except NotebookStopped as exc:
                    result.status, result.error = "interrupted", str(exc)
                    raise
                except KeyboardInterrupt as exc:  # a second Ctrl-C or SIGTERM: the report stops at once
                    result.status = "interrupted"
                    result.error = f"{nb.name} stopped by a second {stop_reason(exc)}; partial notebook kept at {executed}"
                    raise
                finally:
                    result.seconds = round(time.perf_counter() - start, 1)
                result.status = "ok"
                result.exports = export(executed, nb.parent, no_input, pdf, log)
                log(f"{nb.stem}: ok in {result.seconds:.0f} s -> {', '.join(Path(p).name for p in [executed, *result.exports])}")
    except BaseException:
        try:
            manifest()
        except OSError:  # e.g. the disk that ended the report is still full: the first error is the one to say
            pass
        raise
    try:
        manifest()
    except OSError as exc:
        raise UsageError(f"cannot write {out / 'report.json'} ({disk_error(exc)}); the notebooks ran and were "
                         "exported; make room, then run the same command again") from None
    if student is not None:
        from .submission import build_submission

        made = build_submission(out, student, profile.name, folder, {nb.stem: params[nb] for nb in notebooks}, pdf, log)
        log(f"submission: {', '.join(str(p) for p in made)}")
    line = disk_use_line(run_folders(params.values(), folder))
    if line:
        log(line)
    return results


RUN_FOLDER_PARAMETERS = ("RUN_DIR", "RUNS_DIR", "BASELINE_RUN_DIR")  # notebook parameters that name run folders


def run_folders(params, notebooks_dir: Path) -> list[Path]:
    """The run folders the notebooks train into (relative parameters resolved from the notebooks' folder), each
    once and none inside another."""
    found = sorted({(notebooks_dir / str(p[k])).resolve() for p in params for k in RUN_FOLDER_PARAMETERS
                    if isinstance(p.get(k), str) and p.get(k)})
    return [f for f in found if f.is_dir() and not any(o != f and o in f.parents for o in found)]


def disk_use_line(folders: list[Path]) -> str:
    """One line: how much disk the report's runs take, how much of it is checkpoints, and how to free it."""
    files = [f for folder in folders for f in folder.rglob("*") if f.is_file()]
    if not files:
        return ""
    total = sum(f.stat().st_size for f in files)
    checkpoints = sum(f.stat().st_size for f in files if f.suffix == ".pt")
    where = ", ".join(_relative(f) for f in folders)
    return (f"disk: the runs take {total / 2**20:,.0f} MB in {where} ({checkpoints / 2**20:,.0f} MB of it checkpoints, "
            "*.pt); the report and the submission are written and need none of it: delete the folder(s) to free it "
            "(the next report of this profile then trains again)")


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def say_missing_tools(pdf: bool, log: Callable[[str], None]) -> bool:
    """One line each where the figures cannot be Chinese (no CJK font) or no PDF can be made (then the HTML is
    printed from the student's browser); whether to attempt PDFs."""
    from .plots import CJK_HINT, cjk_font

    if cjk_font(say=lambda line: None) is None:
        log(CJK_HINT)
    if pdf and pdf_route() is None:
        log(PRINT_FROM_BROWSER)
        return False
    return pdf


def revise_estimate(result: NotebookResult, stem: str, planned: dict[str, float], finished: list[NotebookResult],
                    log: Callable[[str], None]) -> None:
    """Record the plan's estimate for the notebook about to run and, after the first notebook, log it revised by
    how long the finished ones took against their estimates (plan.revision_factor), with the time left."""
    from ..core.units import duration
    from . import plan

    if not planned.get(stem):
        return
    result.estimate_seconds = round(planned[stem], 1)
    measured = {Path(r.notebook).stem: r.seconds for r in finished if r.status == "ok"}
    if not measured:
        return
    factor = plan.revision_factor(planned, measured)
    result.revised_seconds = round(planned[stem] * factor, 1)
    left = sum(s for name, s in planned.items() if name not in measured) * factor
    log(f"{stem}: estimate revised to ~{duration(result.revised_seconds)} (the plan's ~{duration(planned[stem])} "
        f"x{factor:.2f}: the notebooks so far took x{factor:.2f} their estimates); ~{duration(left)} left")


def print_plan(params: dict[str, dict[str, Any]], log: Callable[[str], None], price_per_hour: float | None = None,
               auto_stop_hours: float | None = None, notebooks_dir: Path | None = None) -> dict[str, float]:
    """Log each notebook's planned training (runs x epochs x images) and a time estimate measured by a
    short warm-up on the notebooks' device; a plan that cannot be made is one line, never an error. Returns
    each notebook's estimated seconds ({} without a plan)."""
    from ..core.device import device_name, resolve_device
    from . import plan

    try:
        plans = plan.plan_report(params, notebooks_dir)  # runs already complete are reused, not planned
        requested = next((p["DEVICE"] for p in params.values() if "DEVICE" in p), "cpu")
        device = resolve_device(requested)
        batches = {(p.model, p.batch_size) for p in plans if p.model} if device.type == "cpu" else set()
        rates = plan.measure_like_a_kernel({p.model for p in plans if p.model}, requested, batches)
        for line in plan.describe(plans, rates, device_name(device), price_per_hour, auto_stop_hours):
            log(line)
        return plan.notebook_seconds(plans, rates)
    except Exception as exc:  # the notebooks report real errors themselves
        log(f"plan: not available ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return {}


def export(executed: Path, source_dir: Path, no_input: bool, pdf: bool, log: Callable[[str], None]) -> list[str]:
    html = export_html(executed, executed.with_suffix(".html"), source_dir, no_input,
                       warn=lambda t: log(f"warning: {t}"))
    made = [str(html)]
    if pdf:
        path, note = export_pdf(html, executed.with_suffix(".pdf"), executed, no_input)
        log(f"{executed.stem}: {note}")
        if path:
            made.append(str(path))
    return made


def write_manifest(path: Path, profile: Profile, results: list[NotebookResult], no_input: bool,
                   notebooks_dir: Path | None = None) -> None:
    from .. import __version__
    from ..core.runs import write_json

    write_json(path, {"profile": profile.name, "cvlab": __version__, "python": sys.executable,
                      "no_input": no_input, "notebooks_dir": str(notebooks_dir) if notebooks_dir else None, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "notebooks": [r.__dict__ for r in results]})
