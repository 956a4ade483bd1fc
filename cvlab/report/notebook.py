"""Small helpers every report notebook calls in its setup cell (notebooks run with cwd = notebooks/)."""
from __future__ import annotations

import warnings


def setup() -> None:
    """Quiet, readable notebook output: warnings on one line, tqdm's text bars without its
    missing-ipywidgets warning (widgets would need scripts from a CDN in the exported HTML),
    compact pandas tables."""
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TqdmWarning: IProgress not found
        import tqdm.auto  # noqa: F401  (the first import decides and warns; later ones are silent)
    warnings.formatwarning = _one_line_warning  # e.g. the MD5 note on a re-packed CIFAR-100 copy
    pd.set_option("display.max_rows", 30)
    pd.set_option("display.width", 120)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"{category.__name__}: {message}\n"
