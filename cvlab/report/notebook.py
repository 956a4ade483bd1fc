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
    warnings.formatwarning = _one_line_warning
    warnings.showwarning = _note  # e.g. the MD5 note on a re-packed CIFAR-100 copy: a plain line, not a red box
    from .plots import cjk_font
    cjk_font()  # Chinese figure text where matplotlib finds a CJK font (else English, said once)
    pd.set_option("display.max_rows", 30)
    pd.set_option("display.width", 120)


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    # stdout, so the executed notebook shows one plain note where Jupyter would draw a red stderr box
    print(f"注意：{message}（{category.__name__}）", flush=True)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"{category.__name__}: {message}\n"


def show_source(*objects) -> None:
    """One line naming where each object's code lives (module.name, file:line). The code itself belongs
    in the submission's appendix (cvlab.report.source), not in the body of the report."""
    from IPython.display import Markdown, display

    from .source import reference

    refs = "；".join(f"`{reference(obj)}`" for obj in objects)
    display(Markdown(f"实现：{refs}（源代码见提交文档的附录 A；交互运行时可用 `inspect.getsource` 查看）"))
