"""The numbers behind answers/: computed by the theory demos, written to docs/results/theory.json,
and rendered into the answer texts, so an answer never quotes a number its evidence does not hold.

    python -m cvlab theory                     # run the demos at the report's setting, write the results
                                               # file and render answers/*.md from answers/templates/
    python -m cvlab theory --render-only       # re-render answers/ from the committed results file

A template is Markdown with placeholders `{{q1.cos_b1:.2f}}`: a dotted path into the results and an
optional format spec (Python's, or `tex` / `tex1` / `tex2` for a LaTeX power of ten with that many
decimals, `texint` for an integer with `{,}` thousands separators inside formulas). Notebook 02 renders
the same templates with the numbers of its own run; tests/test_theory_results.py fails when answers/
and the committed results disagree.
"""
from __future__ import annotations

import math
import platform
import re
from pathlib import Path
from typing import Any, Callable

from ...core.data import CIFAR100_MEAN, HANDOUT_MEAN, HANDOUT_STD, SPLIT_SIZES
from ...core.paths import REPO_ROOT

QUESTIONS = ("q1_batch_size", "q2_epoch", "q3_overfitting", "q4_resnet", "q5_activations", "q6_optimizers")
RESULTS_FILE = REPO_ROOT / "docs" / "results" / "theory.json"
ANSWERS_DIR = REPO_ROOT / "answers"
TEMPLATES_DIR = ANSWERS_DIR / "templates"
NEEDS_DATA = {"q1", "q3", "q4"}   # demos that train or differentiate on images; q2, q5, q6 need none
MISSING = "〔本次未计算〕"
PLACEHOLDER = re.compile(r"\{\{\s*((?:q[1-6]|setting)(?:\.\w+)+)\s*(?::\s*([^}]*?))?\s*\}\}")
GENERATED_NOTE = ("<!-- generated from answers/templates/{name}.md and docs/results/theory.json by "
                  "`python -m cvlab theory`; edit the template, not this file -->\n")


# ---------------------------------------------------------------------------- numbers from each demo

def _f(value) -> float:
    return float(value)


def data_zh(description: str) -> str:
    """A demo's data description (English, as in its figures) said in Chinese for the answers."""
    sizes = re.search(r"([\d,]+) train / ([\d,]+) test", description)
    counts = f"（{sizes.group(1)} 张训练图 / {sizes.group(2)} 张测试图）" if sizes else ""
    if "SYNTHETIC" in description:
        return f"cvlab 生成的合成数据{counts}（SYNTHETIC，不是 CIFAR-100，数字没有意义）"
    return f"CIFAR-100 的类别均衡子集{counts}"


def q1_numbers(r: dict) -> dict[str, Any]:
    """Gradient noise vs batch size (batch_size_demo), and the epoch arithmetic of its table."""
    noise = r["noise"]
    ratio = noise.measured_sq_error / noise.theory_sq_error
    steps = r["steps"].set_index("batch_size")
    return {"n_examples": int(r["n_examples"]), "parameters": int(r["parameters"]), "draws": int(r["draws"]),
            "ratio_min": _f(ratio.min()), "ratio_max": _f(ratio.max()),
            "b_max": int(noise.batch_size.max()), "cos_b1": _f(noise.mean_cosine_to_full.iloc[0]),
            "cos_bmax": _f(noise.mean_cosine_to_full.iloc[-1]), "b_simple": _f(r["noise_scale_B_simple"]),
            "steps_1024": int(steps.steps_per_epoch[1024]), "steps_128": int(steps.steps_per_epoch[128]),
            "total_1024": int(steps.steps_in_100_epochs[1024]), "total_128": int(steps.steps_in_100_epochs[128]),
            "data": r["data"], "data_zh": data_zh(r["data"])}


def q2_numbers(r: dict) -> dict[str, Any]:
    """One epoch on cvlab's TensorLoader (epoch_demo)."""
    n, b = r["n_images"], r["batch_size"]
    plain, shuffled = r["no_shuffle"], r["shuffle"]
    return {"n_images": n, "batch_size": b, "epochs": r["epochs"], "steps": plain["steps_per_epoch"],
            "full_batches": plain["steps_per_epoch"] - 1, "last_batch": plain["last_batch"],
            "images_per_epoch": plain["images_per_epoch"], "total_steps": r["total_steps"],
            "prints_per_epoch": len(range(0, plain["steps_per_epoch"], 10)),
            "kept_no_shuffle": _f(plain["batchmates_kept"]), "kept_shuffle": _f(shuffled["batchmates_kept"]),
            "kept_theory": (b - 1) / (n - 1)}


REGULARIZATION_KEYS = {"none": "none", "augment (crop 4 + flip)": "augment", "weight decay 0.5": "wd"}


BASELINE_KEYS = ("run", "synthetic", "n_train", "epochs", "train_acc", "test_acc", "acc_gap_pp", "train_loss",
                 "test_loss", "min_epoch", "rise")


def baseline_numbers(gap: dict | None) -> dict[str, Any]:
    """The handout ResNet-18's own train/test gap from notebook 01's run directory (run_gap);
    every value None when there is no such run."""
    if gap is None:
        return {f"baseline_{k}": None for k in BASELINE_KEYS}
    values = {"run": Path(gap["run"]).name, "synthetic": bool(gap["synthetic"]), "n_train": gap["n_train"],
              "epochs": gap["epochs"], "train_acc": gap["final_train_acc"], "test_acc": gap["final_test_acc"],
              "acc_gap_pp": 100 * gap["final_acc_gap"], "train_loss": gap["final_train_loss"],
              "test_loss": gap["final_test_loss"], "min_epoch": gap["min_test_loss_epoch"],
              "rise": gap["test_loss_rise_after_min"]}
    return {f"baseline_{k}": v for k, v in values.items()}


def q3_numbers(r: dict, baseline: dict | None = None) -> dict[str, Any]:
    """The small CNN with and without regularization (regularization_demo), and the handout
    ResNet-18's own train/test gap from a baseline run (`baseline`: theory.run_gap's dict, or None)."""
    from ...core.models import build_model, count_parameters

    out: dict[str, Any] = {"n_train": r["n_train"], "n_test": r["n_test"], "epochs": r["epochs"],
                           "data": r["data"], "data_zh": data_zh(r["data"]), "wd": 0.5, "lr": 1e-3, "wd_factor": 1 - 1e-3 * 0.5}
    for row in r["table"].itertuples():
        key = REGULARIZATION_KEYS[row.setting]
        out.update({f"{key}_train_loss": _f(row.final_train_loss), f"{key}_test_loss": _f(row.final_test_loss),
                    f"{key}_gap": _f(row.loss_gap), f"{key}_test_acc": _f(row.final_test_acc),
                    f"{key}_train_acc": _f(row.final_train_acc), f"{key}_min_epoch": int(row.min_test_loss_epoch)})
    out["augment_gap_share"] = out["augment_gap"] / out["none_gap"]
    params = count_parameters(build_model("handout_resnet18"))
    out.update({"handout_parameters": params, "params_per_image": params / SPLIT_SIZES["train"]})
    out.update(baseline_numbers(baseline))
    return out


def q4_numbers(r: dict) -> dict[str, Any]:
    """Plain vs residual: gradients at initialisation and a short training run (residual_demo)."""
    grads = {(row.network, bool(row.batchnorm)): row for row in r["gradients"].itertuples()}
    training = r["training"].set_index("model")
    loss_column = next(c for c in training.columns if c.startswith("mean_loss_last_"))
    out: dict[str, Any] = {"data": r["data"], "data_zh": data_zh(r["data"]), "steps": int(training.steps.iloc[0]),
                           "tail": int(loss_column.split("_")[3]), "chance_loss": math.log(100)}
    for net in ("plain", "residual"):
        for bn in (True, False):
            out[f"{net}_{'bn' if bn else 'nobn'}_first"] = _f(grads[net, bn].first_layer)
            out[f"{net}_{'bn' if bn else 'nobn'}_last"] = _f(grads[net, bn].last_conv_layer)
    for name, key in (("plain, 8 layers", "plain8"), ("plain, 32 layers", "plain32"),
                      ("residual, 32 layers", "residual32")):
        out[f"{key}_loss"] = _f(training.loc[name, loss_column])
    return out


def q5_numbers(r: dict) -> dict[str, Any]:
    """Activation functions, their saturation and the gradient through a deep MLP (activation_demo)."""
    t = r["table"].set_index("activation")
    ratio, field = r["gradient_ratio"], r["mean_field"]
    out: dict[str, Any] = {"depth": int(r["depth"]), "relu_mean": _f(t.loc["ReLU", "E[f(z)], z~N(0,1)"]),
                           "sigmoid_sat": _f(t.loc["sigmoid", "|f'| < 0.01 for x >"]),
                           "tanh_sat": _f(t.loc["tanh", "|f'| < 0.01 for x >"]),
                           "elu_sat": _f(-t.loc["ELU", "|f'| < 0.01 for x <"]),
                           "gelu_max_grad": _f(t.loc["GELU", "max f'"]), "silu_max_grad": _f(t.loc["SiLU", "max f'"]),
                           "gelu_min": _f(t.loc["GELU", "min_f"]), "silu_min": _f(t.loc["SiLU", "min_f"]),
                           "sigmoid_depth_bound": 0.25 ** int(r["depth"]),
                           "red_mean_after_handout": (CIFAR100_MEAN[0] - HANDOUT_MEAN[0]) / HANDOUT_STD[0]}
    for name in ratio.index:
        out[f"ratio_{name.lower()}"] = _f(ratio[name])
    for name in field.index:
        key = name.lower()
        out.update({f"chi_{key}": _f(field.loc[name, "chi_last"]), f"q_{key}": _f(field.loc[name, "q_last"]),
                    f"predicted_{key}": _f(field.loc[name, "predicted_ratio"])})
    return out


SURFACE_KEYS = {"quadratic, kappa=100": "quad", "same, rotated 30 deg": "rot", "Rosenbrock": "rosen"}


def q6_numbers(r: dict) -> dict[str, Any]:
    """torch.optim on three 2-D surfaces (optimizer_demo), plus the closed forms the answer compares with."""
    kappa = 100.0
    out: dict[str, Any] = {"lr_min": min(r["lr_grid"]), "lr_max": max(r["lr_grid"]), "n_lr": len(r["lr_grid"]),
                           "rate_gd": (kappa - 1) / (kappa + 1),
                           "rate_heavy_ball": (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1),
                           "adam_bound": (1 - 0.9) / math.sqrt(1 - 0.999)}
    for row in r["table"].itertuples():
        key = f"{SURFACE_KEYS[row.surface]}_{row.optimizer.lower()}"
        out[f"{key}_loss"], out[f"{key}_lr"] = _f(row.final_loss), _f(row.best_lr)
        out[f"{SURFACE_KEYS[row.surface]}_steps"] = int(row.steps)
    # SGD on f = 1/2 [(x-1)^2 + 100 (y-1)^2] from (-3, 2): each coordinate shrinks by (1 - lr * curvature) per step
    lr, steps = out["quad_sgd_lr"], out["quad_steps"]
    out["quad_sgd_predicted"] = 0.5 * ((4 * (1 - lr) ** steps) ** 2 + kappa * ((1 - kappa * lr) ** steps) ** 2)
    out["quad_sgd_x_factor"] = 1 - lr
    out.update(recipe_numbers())
    return out


def recipe_numbers(preset: str = "+sgd-onecycle") -> dict[str, Any]:
    """The project's own optimizer recipe (the ladder rung that switches from Adam), from its preset."""
    from ...core.config import make_config

    cfg, handout = make_config(preset), make_config("handout")
    return {"recipe_preset": preset, "recipe_momentum": cfg.momentum, "recipe_wd": cfg.weight_decay,
            "recipe_batch": cfg.batch_size, "recipe_lr": cfg.lr, "recipe_lr_per_256": cfg.lr * 256 / cfg.batch_size,
            "recipe_warmup_share": cfg.warmup, "handout_lr": handout.lr,
            "handout_steps": (steps := handout.epochs * -(-SPLIT_SIZES["train"] // handout.batch_size)),
            "handout_displacement": steps * handout.lr}


EXTRACT: dict[str, Callable[[dict], dict[str, Any]]] = {
    "q1": q1_numbers, "q2": q2_numbers, "q3": q3_numbers, "q4": q4_numbers, "q5": q5_numbers, "q6": q6_numbers}


# ---------------------------------------------------------------------------- computing and writing

def setting(data, quick: bool, seed: int) -> dict[str, Any]:
    """What the numbers depend on: the demos' setting, the data, the software and the machine."""
    import torch

    from ... import __version__
    return {"quick": quick, "seed": seed, "data": data.description if data is not None else "none",
            "synthetic": bool(data is not None and data.synthetic), "device": "cpu, 1 thread",
            "torch": torch.__version__, "cvlab": __version__, "python": platform.python_version(),
            "machine": platform.machine()}


def baseline_gap(run_dir: str | Path | None) -> dict | None:
    """run_gap of notebook 01's run directory, None when it is missing or unreadable."""
    from ...core.errors import RunDirError
    from .q3_overfitting import run_gap

    if run_dir is None:
        return None
    try:
        return run_gap(run_dir)
    except (RunDirError, OSError, KeyError, ValueError):
        return None


def compute(fig_dir: str | Path, data, quick: bool = False, seed: int = 0, baseline_run: str | Path | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the six demos at one setting (`data` None: q1, q3 and q4 are skipped) and return their numbers;
    `baseline_run` (notebook 01's run directory) adds the handout ResNet-18's own gap to q3."""
    from . import q1_batch_size, q2_epoch, q3_overfitting, q4_resnet, q5_activations, q6_optimizers

    demos = {"q1": lambda: q1_batch_size.batch_size_demo(fig_dir, data, quick=quick, seed=seed),
             "q2": lambda: q2_epoch.epoch_demo(fig_dir, seed=seed),
             "q3": lambda: q3_overfitting.regularization_demo(fig_dir, data, quick=quick, seed=seed),
             "q4": lambda: q4_resnet.residual_demo(fig_dir, data, quick=quick, seed=seed),
             "q5": lambda: q5_activations.activation_demo(fig_dir, quick=quick, seed=seed),
             "q6": lambda: q6_optimizers.optimizer_demo(fig_dir, quick=quick)}
    results: dict[str, Any] = {"setting": setting(data, quick, seed)}
    for key, demo in demos.items():
        if data is None and key in NEEDS_DATA:
            results[key] = None
            log(f"{key}: skipped (no CIFAR-100)")
            continue
        log(f"{key}: running")
        results[key] = EXTRACT[key](demo()) if key != "q3" else q3_numbers(demo(), baseline_gap(baseline_run))
    return results


def write_results(results: dict[str, Any], path: str | Path = RESULTS_FILE) -> Path:
    from ...core.runs import write_json
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, results)
    return path


def read_results(path: str | Path = RESULTS_FILE) -> dict[str, Any]:
    import json
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------- rendering

def format_value(value: Any, spec: str) -> str:
    """`value` with a Python format spec, or `tex[N]` (a x 10^{k} with N decimals) or `texint`."""
    if spec.startswith("tex") and spec != "texint":
        digits = int(spec[3:] or 1)
        if value == 0:
            return "0"
        exponent = math.floor(math.log10(abs(value)))
        mantissa = value / 10 ** exponent
        if round(mantissa, digits) >= 10:
            mantissa, exponent = mantissa / 10, exponent + 1
        if -2 <= exponent <= 2:  # 0.0xx .. 999: no power of ten needed
            return f"{value:.{max(digits - exponent, 0)}f}"
        return f"{mantissa:.{digits}f}\\times10^{{{exponent}}}"
    if spec == "texint":
        return f"{int(value):,}".replace(",", "{,}")
    return format(value, spec) if spec else str(value)


def lookup(results: dict[str, Any], path: str) -> Any:
    """The value at a dotted path; None when its question was not computed; KeyError when it never exists."""
    node: Any = results
    for part in path.split("."):
        if node is None:
            return None
        node = node[part]
    return node


CONDITION = re.compile(r"^\{\{([?!])\s*((?:q[1-6]|setting)(?:\.\w+)+)\s*\}\}[ ]?", re.M)


def _conditional_lines(template: str, results: dict[str, Any]) -> str:
    """Lines starting `{{?path}}` stay only when the value at path exists (is not None); lines starting
    `{{!path}}` only when it does not: an answer can say one thing with a number and another without."""
    kept = []
    for line in template.splitlines(keepends=True):
        match = CONDITION.match(line)
        if match:
            try:
                present = lookup(results, match.group(2)) is not None
            except KeyError:
                present = False
            if present != (match.group(1) == "?"):
                continue
            line = line[match.end():]
        kept.append(line)
    return "".join(kept)


def render(template: str, results: dict[str, Any]) -> str:
    """The template with its conditional lines resolved and every placeholder replaced (MISSING where
    the question was not computed)."""
    template = _conditional_lines(template, results)
    def replace(match: re.Match) -> str:
        try:
            value = lookup(results, match.group(1))
        except (KeyError, TypeError):
            raise KeyError(f"placeholder {{{{{match.group(1)}}}}} names no number in the results") from None
        return MISSING if value is None else format_value(value, match.group(2) or "")
    return PLACEHOLDER.sub(replace, template)


def render_answer(name: str, results: dict[str, Any], templates: Path = TEMPLATES_DIR) -> str:
    return render((templates / f"{name}.md").read_text(encoding="utf-8"), results)


def render_answers(results: dict[str, Any], answers: Path = ANSWERS_DIR, templates: Path = TEMPLATES_DIR) -> list[Path]:
    """Write answers/<name>.md for every question from its template and `results`."""
    written = []
    for name in QUESTIONS:
        path = answers / f"{name}.md"
        path.write_text(GENERATED_NOTE.format(name=name) + render_answer(name, results, templates), encoding="utf-8")
        written.append(path)
    return written


def stale_answers(results: dict[str, Any], answers: Path = ANSWERS_DIR, templates: Path = TEMPLATES_DIR) -> list[str]:
    """The answers whose text differs from their template rendered with `results` (empty: all agree)."""
    return [name for name in QUESTIONS
            if (answers / f"{name}.md").read_text(encoding="utf-8")
            != GENERATED_NOTE.format(name=name) + render_answer(name, results, templates)]


def _flatten(results: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in results.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(results: dict[str, Any], committed: dict[str, Any], rel: float = 1e-6,
                skip: tuple[str, ...] = ("q3.baseline_",)) -> list[tuple[str, Any, Any]]:
    """(name, this value, committed value) for every number or text of the questions that differs
    (relative tolerance `rel` for numbers; a question not computed in either counts as different).
    Names starting with `skip` are left out: the baseline's gap comes from notebook 01's run, not the demos."""
    mine = _flatten({k: v for k, v in results.items() if k != "setting"})
    theirs = _flatten({k: v for k, v in committed.items() if k != "setting"})
    out = []
    for name in sorted(set(mine) | set(theirs)):
        if name.startswith(skip):
            continue
        a, b = mine.get(name), theirs.get(name)
        same = (isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
                and math.isclose(a, b, rel_tol=rel, abs_tol=1e-300)) or a == b
        if not same:
            out.append((name, a, b))
    return out
