"""Where things are: the checkout that holds cvlab, and the one rule for the data folder."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages folder) that holds cvlab/
DEFAULT_DATA_DIR = REPO_ROOT / "data"             # the repository's data/ folder, git-ignored
DATA_ENV = "CVLAB_DATA"


def resolve_data_root(value: str | os.PathLike = "") -> Path:
    """The data folder: `value` when given (relative to the working directory), else $CVLAB_DATA,
    else the repository's data/ folder, whatever the working directory is (CLI, notebooks, papermill)."""
    if str(value):
        return Path(value).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return DEFAULT_DATA_DIR


def user_cache_dir() -> Path:
    """This user's cvlab cache folder, created if needed: $CVLAB_CACHE, else $XDG_CACHE_HOME/cvlab or
    ~/.cache/cvlab (%LOCALAPPDATA%\\cvlab on Windows). Never a fixed name in the shared temp dir, which another
    user may have made first (unreadable to this one) or filled with files of their choosing. When no home
    folder takes it (e.g. a service account without one): a folder of this user's own in the temp dir, used
    only when it is this user's and private (0700), else a new private one for this process."""
    import tempfile

    for folder in _cache_candidates():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
    shared = Path(tempfile.gettempdir()) / f"cvlab-{_user_id()}"
    try:
        shared.mkdir(mode=0o700, exist_ok=True)
        if _private_to_me(shared):
            return shared
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="cvlab-cache-"))


def _cache_candidates() -> list[Path]:
    if os.environ.get("CVLAB_CACHE"):
        return [Path(os.environ["CVLAB_CACHE"]).expanduser()]
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return [Path(os.environ["LOCALAPPDATA"]) / "cvlab"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(base).expanduser() / "cvlab"] if os.path.isabs(base) else []


def _user_id() -> str:
    if hasattr(os, "getuid"):
        return str(os.getuid())
    import getpass
    return getpass.getuser()


def _private_to_me(folder: Path) -> bool:
    """A real folder (not a link), owned by this user, that no one else may enter (POSIX); True elsewhere."""
    import stat
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode):
        return False
    if not hasattr(os, "getuid"):
        return True
    return info.st_uid == os.getuid() and info.st_mode & 0o077 == 0


def check_output_file(path: str | os.PathLike, force: bool, option: str, default_suffix: str = "",
                      suffixes: tuple[str, ...] = ()) -> Path:
    """The file an output option (`option`, e.g. "--json") will write, checked before any work starts:
    a name is given, `default_suffix` is added when it has none, its suffix is one of `suffixes` (when
    given), it is not a folder, it does not exist unless `force`, and its folder exists and takes a new
    file. UsageError (one line) otherwise; nothing is left on disk."""
    import tempfile

    from .errors import UsageError

    if not str(path).strip():
        raise UsageError(f"{option} needs a file name, got ''")
    path = Path(path).expanduser()
    if path.is_dir():  # before a suffix is added: `--grid FOLDER` would otherwise write FOLDER.png beside it
        raise UsageError(f"{option} {path} is a folder; give a file name inside it")
    if default_suffix and not path.suffix:
        path = path.with_name(path.name + default_suffix)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path}: the suffix {path.suffix or '(none)'} is not one of {', '.join(suffixes)}")
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name inside it")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to replace it or choose another file")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: the folder {folder} does not exist; create it or choose another file")
    try:
        with tempfile.TemporaryFile(dir=folder):  # the only sure test that a new file can be written there
            pass
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write in {folder} ({exc.strerror or exc}); "
                         "choose another file") from None
    return path


def git_commit() -> str | None:
    """The commit of the cvlab checkout, with '-dirty' when it has local changes; None outside git."""
    import subprocess

    repo = REPO_ROOT
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")
