"""What the report notebooks call: one `setup` for all three, and one function per notebook that turns its
parameters into what it runs (`baseline_config`, `theory_quick`, `improvements`, from report/parameters.py,
which `report.plan` calls too, so the estimate and the notebook cannot disagree), and live feedback.
Notebooks run with cwd = notebooks/; cvlab is imported as installed (`pip install -e .`) or from the checkout
that `cvlab report` puts on the kernels' PYTHONPATH."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from .parameters import Improvements, baseline_config, improvements, theory_quick  # noqa: F401  (the notebooks call them here)


def setup(data_root: str = "") -> Path:
    """Quiet, readable notebook output: warnings on one line (the data's MD5 note once, as plain text),
    tqdm's text bars without its missing-ipywidgets warning (widgets would need scripts from a CDN in the
    exported HTML), compact pandas tables, Chinese figure text where a CJK font exists. Prints which cvlab
    runs, and returns the data folder by the one rule (`data_root`, else $CVLAB_DATA, else the repository's
    data/)."""
    import pandas as pd

    import cvlab

    from ..core.paths import resolve_data_root
    from .plots import cjk_font

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TqdmWarning: IProgress not found
        import tqdm.auto  # noqa: F401  (the first import decides and warns; later ones are silent)
    warnings.formatwarning = _one_line_warning
    warnings.showwarning = _note  # e.g. the MD5 note on a re-packed CIFAR-100 copy: a plain line, not a red box
    cjk_font()  # Chinese figure text where matplotlib finds a CJK font (else English, said once)
    pd.set_option("display.max_rows", 30)
    pd.set_option("display.width", 120)
    print(f"cvlab {cvlab.__version__} from {Path(cvlab.__file__).parent}")
    return resolve_data_root(data_root)


_noted: set[str] = set()


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    # stdout, so the executed notebook shows one plain note where Jupyter would draw a red stderr box; once per
    # kernel (each later load of the data warns again: filter changes elsewhere reset Python's once-registry)
    text = f"注意：{message}"
    if text not in _noted:
        _noted.add(text)
        print(text, flush=True)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"{category.__name__}: {message}\n"


def show_source(*objects) -> None:
    """One line naming where each object's code lives (module.name, file:line). The code itself belongs
    in the submission's appendix (cvlab.report.source), not in the body of the report."""
    from IPython.display import Markdown, display

    from .source import reference

    refs = "；".join(f"`{reference(obj)}`" for obj in objects)
    display(Markdown(f"实现：{refs}（源代码见附录 A<!-- notebook-only -->；交互运行时可用 `inspect.getsource` 查看"
                     "<!-- /notebook-only -->）"))


# ---------------------------------------------------------------------------- live feedback when a person runs it

REPORT_ENV = "CVLAB_REPORT"   # set by `cvlab report` in its kernels' environment (runner.kernel_environment)
LONG_RUN_SECONDS = 30 * 60    # on a CPU, an interactive run estimated longer than this stops first and says why


def interactive() -> bool:
    """True in a Jupyter kernel a person drives (JupyterLab, Notebook, VS Code); False under `cvlab report`
    (papermill: one line per epoch, no bars or live plots in the executed copy) and outside Jupyter."""
    if os.environ.get(REPORT_ENV):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def headless() -> bool:
    """True in a kernel no one can answer: `jupyter nbconvert --execute`, nbclient or papermill run cells without
    stdin (allow_stdin false), where JupyterLab, Notebook and VS Code allow it."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    return kernel is not None and not getattr(kernel, "_allow_stdin", True)


def skip_remaining_cells(note: str = "") -> None:
    """Run every later cell of this kernel as a no-op, so that a headless run ends here without an error (nbconvert
    then writes the notebook, this cell's message included); `note` is printed first."""
    from IPython import get_ipython

    if note:
        print(note, flush=True)
    shell = get_ipython()
    shell.input_transformers_cleanup.append(lambda lines: ["pass  # skipped: the notebook stopped above\n"])


class LongRun(Exception):
    """An interactive CPU run that would take long: stopped before it starts, with what to change."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [str(self)]


class LivePlot:
    """Loss and accuracy per epoch, redrawn in place after every epoch (d2l's Animator, as a PNG: no widgets)."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.rows, self.handle = epochs, [], None

    def __call__(self, row: dict) -> None:
        from io import BytesIO

        from IPython.display import Image, display
        from matplotlib.figure import Figure

        from .plots import zh

        self.rows.append(row)
        epochs = [r["epoch"] for r in self.rows]
        fig = Figure(figsize=(9, 3.2), layout="constrained")
        loss, acc = fig.subplots(1, 2)
        loss.plot(epochs, [r["train_loss"] for r in self.rows], "o-", label=zh("训练损失", "train loss"))
        loss.plot(epochs, [r["test_loss"] for r in self.rows], "s-", label=zh("测试损失", "test loss"))
        acc.plot(epochs, [100 * r["train_acc"] for r in self.rows], "o-", label=zh("训练 top-1", "train top-1"))
        acc.plot(epochs, [100 * r["test_acc"] for r in self.rows], "s-", label=zh("测试 top-1", "test top-1"))
        for ax, ylabel in ((loss, zh("交叉熵损失", "loss")), (acc, zh("准确率 (%)", "accuracy (%)"))):
            ax.set(xlabel="epoch", ylabel=ylabel, xlim=(0.5, max(self.epochs, 1) + 0.5))
            ax.grid(alpha=0.3)
            ax.legend(loc="best")
        fig.suptitle(zh(f"第 {epochs[-1]}/{self.epochs} 个 epoch", f"epoch {epochs[-1]}/{self.epochs}"))
        buffer = BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        image = Image(data=buffer.getvalue(), format="png")
        if self.handle is None:
            self.handle = display(image, display_id=True)
        else:
            self.handle.update(image)


class LiveTraining:
    """What `engine.fit` gets from a notebook: the config (progress bar on when interactive) and the hooks."""

    def __init__(self, cfg, on_epoch_end=None, on_step=None) -> None:
        self.cfg, self.on_epoch_end, self.on_step = cfg, on_epoch_end, on_step


def live_training(cfg, confirm: bool = False, long_run_seconds: float = LONG_RUN_SECONDS) -> LiveTraining:
    """Live feedback for `fit(cfg, ...)` when a person runs the notebook: on a CPU, the estimated time first
    (a long run stops here with the parameters to change, unless `confirm`); then a progress bar within each
    epoch (tqdm.auto: a widget with ipywidgets, else text), a time estimate after the first steps, and a
    loss/accuracy plot redrawn after every epoch. Under `cvlab report` it changes nothing."""
    if not interactive():
        return LiveTraining(cfg)
    from ..core.config import with_overrides
    from ..core.device import device_name, resolve_device
    from . import plan

    device = resolve_device(cfg.device)
    train_images, eval_images = plan.split_sizes(cfg)
    if device.type == "cpu":
        rates = plan.measure_rates({cfg.model}, device, batches={(cfg.model, cfg.batch_size)})
        seconds = plan.estimate_seconds(plan.planned_trainings("notebook", [cfg])[0], rates) or 0.0
        what = (f"{cfg.epochs} 个 epoch × {train_images:,} 张训练图像（batch {cfg.batch_size}），"
                f"{device_name(device)}")
        if seconds > long_run_seconds and not confirm:
            stop = LongRun(
                f"按当前参数训练（{what}）预计约 {plan.duration(seconds)}（本机几步预热测得，实际更慢）。"
                "这是 GPU 上的工作量，所以没有开始训练。\n"
                "在 CPU 上检查流程：把参数格改成 EPOCHS = 3、SUBSET = 5000、TEST_SUBSET = 1000、BATCH_SIZE = 256"
                "（几分钟），或在命令行运行 python -m cvlab report --profile quick；\n"
                "确实要在 CPU 上完整训练：把这一格的 notebook.live_training(cfg) 改成 "
                "notebook.live_training(cfg, confirm=True)。")
            if not headless():
                raise stop
            # nbconvert --execute / papermill: an error would leave no notebook behind; stop cleanly instead
            skip_remaining_cells(f"{stop}\n（无界面运行：后面的格子都没有执行。）")
            return LiveTraining(cfg)
        print(f"预计训练时间约 {plan.duration(seconds)}（{what}；本机几步预热测得）")
    return LiveTraining(with_overrides(cfg, {"progress": True}), LivePlot(cfg.epochs),
                        plan.StepEstimate(cfg.epochs, cfg.batch_size, eval_images, log=_tqdm_write))


def _tqdm_write(text: str) -> None:
    from tqdm.auto import tqdm
    tqdm.write(text)
