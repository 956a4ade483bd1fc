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
