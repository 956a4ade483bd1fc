"""Export a run's weights as one file that a user can load without the run directory:

    import torch, cvlab
    ckpt = torch.load("model.pt", weights_only=True)
    model = cvlab.build_model(**ckpt["build"]).eval(); model.load_state_dict(ckpt["state_dict"])

The file is a dict of tensors, strings, numbers and lists only (it loads with weights_only=True):
`build` (model name, num_classes, dropout), `state_dict`, `class_names`, `superclass_names`, `input`
(size, channel order, scaling, normalization mean/std, how to resize), `tta_flip`, `weights` (which
parameters, from which checkpoint and epoch), `metrics` (the run's recorded figures for them), `config`
(the run's whole config), `cvlab_version`, `torch_version`, `format`. Optionally an ONNX graph beside it.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..core.data import NORMALIZATION, class_names_for_config
from ..core.errors import UsageError
from ..core.paths import check_output_file
from ..core.runs import RunDir, atomic_write_bytes
from .analysis import TrainedModel, load_trained_model, with_data_root
from .predict import IMAGE_SIZE, RESIZE_FILTER

FORMAT = "cvlab-export/1"


def input_spec(normalization: str) -> dict:
    """How an image becomes the network's input, with the run's normalization constants per channel."""
    mean, std = NORMALIZATION[normalization]
    if len(mean) == 1:  # the handout's single-channel constants apply to every channel
        mean, std = mean * 3, std * 3
    return {"size": [3, IMAGE_SIZE, IMAGE_SIZE], "channels": "RGB", "dtype": "float32",
            "scale": "uint8 pixel / 255, then (x - mean) / std per channel",
            "mean": list(mean), "std": list(std), "normalization": normalization,
            "resize": f"central square crop, then {IMAGE_SIZE}x{IMAGE_SIZE} with Pillow {RESIZE_FILTER}"}


def _recorded_metrics(trained: TrainedModel) -> dict:
    """The run's own figures for these weights (metrics.json), for the record; {} when unknown."""
    metrics = RunDir(trained.checkpoint.parent).read_metrics()  # one line when it is corrupt
    if not metrics:
        return {}
    dataset = metrics.get("dataset", {})
    if trained.weights == "best":
        figures = metrics.get("best") or {}
    elif trained.weights == "raw" and metrics.get("evaluated_weights") == "ema":
        figures = {}  # the run never evaluated its raw weights
    else:
        figures = metrics.get("final", {})
    return {"figures": figures, "synthetic": bool(dataset.get("synthetic", trained.config.synthetic)),
            "n_train": dataset.get("n_train"), "n_test": dataset.get("n_test"), "device": metrics.get("device")}


def export_payload(trained: TrainedModel, fine_names: list[str], coarse_names: list[str]) -> dict:
    cfg = trained.config
    state = {k: v.detach().to("cpu").contiguous() for k, v in trained.model.state_dict().items()}
    return {
        "format": FORMAT,
        "build": {"name": cfg.model, "num_classes": cfg.num_classes, "dropout": cfg.dropout},
        "state_dict": state,
        "class_names": list(fine_names),
        "superclass_names": list(coarse_names),
        "input": input_spec(cfg.normalization),
        "tta_flip": cfg.tta_flip,
        "weights": {"choice": trained.weights, "parameters": trained.parameters,
                    "checkpoint": trained.checkpoint.name, "epoch": trained.epoch},
        "metrics": _recorded_metrics(trained),
        "config": cfg.to_dict(),
        "cvlab_version": __version__,
        "torch_version": str(torch.__version__),  # a str subclass that weights_only refuses
    }


@dataclass
class ExportResult:
    path: Path
    payload: dict
    onnx_path: Path | None = None
    onnx_note: str = ""          # what happened with --onnx, one line


def check_output_path(out: str | Path, force: bool) -> Path:
    """The torch file `export_run` writes, checked before the work (see paths.check_output_file); a name
    ending in .onnx is refused, since the torch file is not an ONNX graph (--onnx writes one beside it)."""
    if Path(out).suffix.lower() == ".onnx":
        out = Path(out)
        raise UsageError(f"--out {out} names the torch file, which is not an ONNX graph; give e.g. "
                         f"{out.with_suffix('.pt')} (with --onnx, {out} is written beside it)")
    return check_output_file(out, force, "--out")


def export_run(run_dir: str | Path, out: str | Path, weights: str = "last", force: bool = False,
               onnx: bool = False, data_root: str | None = None) -> ExportResult:
    """Write the exported file `out` (and `out` with suffix .onnx when `onnx`); refuses existing files unless `force`."""
    out = check_output_path(out, force)
    onnx_path = check_output_file(out.with_suffix(".onnx"), force, "--onnx") if onnx else None
    trained = load_trained_model(run_dir, "cpu", weights)
    fine_names, coarse_names = class_names_for_config(with_data_root(trained.config, data_root))
    payload = export_payload(trained, fine_names, coarse_names)
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(out, buf.getvalue())
    result = ExportResult(out, payload)
    if onnx_path is not None:
        result.onnx_path, result.onnx_note = export_onnx(trained.model, onnx_path)
    return result


def export_onnx(model: torch.nn.Module, path: Path, batch: int = 4, seed: int = 0) -> tuple[Path | None, str]:
    """Write an ONNX graph (input `images` float32 (N, 3, 32, 32), output `logits`), checked against torch's
    output with ONNX Runtime when installed. Returns (path or None, a one-line note)."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        return None, (f"no ONNX file written: {' and '.join(missing)} not installed "
                      "(pip install -e '.[onnx]' for --onnx)")
    model = model.float().to("cpu").eval()
    example = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
    tmp = path.with_name(f".{path.name}.part")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its passes
            torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, _check_onnx(model, path, example)


def _check_onnx(model: torch.nn.Module, path: Path, example: torch.Tensor) -> str:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return f"wrote {path}; not checked: onnxruntime not installed"
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"images": example.numpy()})
    with torch.inference_mode():
        want = model(example)
    diff = (torch.from_numpy(got) - want).abs().max().item()
    scale = want.abs().max().item()
    if diff > 1e-4 * max(1.0, scale):
        path.unlink()
        raise UsageError(f"{path}: ONNX Runtime's logits differ from torch's by {diff:.2e}; the ONNX file was removed")
    return f"wrote {path}; ONNX Runtime matches torch on {example.shape[0]} random inputs (max |diff| {diff:.1e})"
