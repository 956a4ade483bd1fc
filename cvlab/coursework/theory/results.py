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
NEEDS_DATA = {"q1", "q3", "q4"}   # demos that train or differentiate on images; q2, q5 need none, and q6's
                                  # surfaces neither (its handout-network part is left out without images)
MISSING = "〔本次未计算〕"
PLACEHOLDER = re.compile(r"\{\{\s*((?:q[1-6]|setting)(?:\.\w+)+)\s*(?::\s*([^}]*?))?\s*\}\}")
GENERATED_NOTE = ("<!-- generated from answers/templates/{name}.md and docs/results/theory.json by "
                  "`python -m cvlab theory`; edit the template, not this file -->\n")


# ---------------------------------------------------------------------------- numbers from each demo

LOSS_TIE = 0.05      # nats: two single-seed runs whose losses differ by less are not ordered ("a tie")
CHANCE_CLASSES = 100  # CIFAR-100: guessing gives accuracy 1/100 and cross-entropy ln 100
NEAR_CHANCE = 2.0     # an accuracy under this many times chance is "close to guessing"


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
            "data": r["data"], "data_zh": data_zh(r["data"]), **q1_training_numbers(r.get("training"))}


def q1_training_numbers(t: dict | None) -> dict[str, Any]:
    """The handout network trained at several batch sizes (batch_training_demo); None values without it."""
    if t is None:
        return {"train_n": None, "train_epochs": None, "train_rows": None, "train_data_zh": None}
    rows = [{"batch_size": int(r.batch_size), "lr": _f(r.lr), "steps": int(r.steps), "images_seen": int(r.images_seen),
             "train_loss": _f(r.train_loss_last_quarter), "test_loss": _f(r.final_test_loss),
             "test_acc": _f(r.final_test_acc)} for r in t["table"].itertuples()]
    return {"train_n": int(t["n_train"]), "train_epochs": int(t["epochs"]), "train_rows": rows,
            "train_data_zh": data_zh(t["data"])}


def q2_numbers(r: dict) -> dict[str, Any]:
    """One epoch on cvlab's TensorLoader (epoch_demo)."""
    n, b = r["n_images"], r["batch_size"]
    plain, shuffled = r["no_shuffle"], r["shuffle"]
    return {"n_images": n, "batch_size": b, "epochs": r["epochs"], "steps": plain["steps_per_epoch"],
            "full_batches": plain["steps_per_epoch"] - 1, "last_batch": plain["last_batch"],
            "images_per_epoch": plain["images_per_epoch"], "total_steps": r["total_steps"],
            "prints_per_epoch": len(range(0, plain["steps_per_epoch"], 10)),
            "kept_no_shuffle": _f(plain["batchmates_kept"]), "kept_shuffle": _f(shuffled["batchmates_kept"]),
            # a random partition into batches of sizes s_j keeps a pair together with probability
            # sum s_j (s_j - 1) / (N (N - 1)); (B - 1)/(N - 1) only when every batch has B images
            "kept_theory": kept_together(n, [b] * (plain["steps_per_epoch"] - 1) + [plain["last_batch"]]),
            "kept_equal_batches": (b - 1) / (n - 1)}


def kept_together(n: int, sizes: list[int]) -> float:
    """Probability that two given images share a batch when n images are split at random into batches of `sizes`."""
    assert sum(sizes) == n, (sizes, n)
    return sum(s * (s - 1) for s in sizes) / (n * (n - 1))


def _regularization_keys() -> dict[str, str]:
    """The regularization demo's settings (its table's `setting` column) -> the answers' short keys."""
    from .q3_overfitting import REGULARIZERS
    return dict(zip(REGULARIZERS, ("none", "augment", "wd")))


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

    from .q3_overfitting import LR, REGULARIZERS

    keys = _regularization_keys()
    wd = REGULARIZERS[next(name for name, key in keys.items() if key == "wd")][1]  # the demo's own setting
    out: dict[str, Any] = {"n_train": r["n_train"], "n_test": r["n_test"], "epochs": r["epochs"],
                           "data": r["data"], "data_zh": data_zh(r["data"]), "wd": wd, "lr": LR, "wd_factor": 1 - LR * wd}
    for row in r["table"].itertuples():
        key = keys[row.setting]
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
    grads = {(row.network, bool(row.batchnorm), row.init): row for row in r["gradients"].itertuples()}
    training = r["training"].set_index("model")
    loss_column = next(c for c in training.columns if c.startswith("mean_loss_last_"))
    out: dict[str, Any] = {"data": r["data"], "data_zh": data_zh(r["data"]), "steps": int(training.steps.iloc[0]),
                           "tail": int(loss_column.split("_")[3]), "chance_loss": math.log(100),
                           # PyTorch's default conv init: kaiming_uniform(a=sqrt(5)), Var(w) = 1/(3 fan_in)
                           "default_sigma_w2": 1 / 3, "default_chi": 1 / 3 * 0.5,
                           "layers": len(r["gradient_norms"]["plain", True, "default"])}
    for (net, bn, init), row in grads.items():
        key = f"{net}_{'bn' if bn else 'nobn'}{'_he' if init == 'he' else ''}"
        out[f"{key}_first"], out[f"{key}_last"] = _f(row.first_layer), _f(row.last_conv_layer)
        out[f"{key}_first_over_last"] = out[f"{key}_first"] / out[f"{key}_last"]
    for name, key in (("plain, 8 layers", "plain8"), ("plain, 32 layers", "plain32"),
                      ("residual, 32 layers", "residual32")):
        out[f"{key}_loss"] = _f(training.loc[name, loss_column])
    return out


def q4_wording(n: dict[str, Any]) -> dict[str, str]:
    """The sentences of answer (4) that state an outcome, chosen by the numbers they describe."""
    vanish = n["plain_nobn_first_over_last"] < 1e-3
    he_fixes = n["plain_nobn_he_first"] > 1e3 * n["plain_nobn_first"]
    grows = n["plain_bn_first_over_last"] > 1
    deeper_worse = n["plain32_loss"] - n["plain8_loss"] >= LOSS_TIE
    shortcut_best = min(n["plain8_loss"], n["plain32_loss"]) - n["residual32_loss"] >= LOSS_TIE
    losses = [n["plain8_loss"], n["plain32_loss"], n["residual32_loss"]]
    return {
        "nobn_zh": ("普通网络的梯度向输入端指数衰减" if vanish else "普通网络的梯度向输入端没有明显衰减"),
        "he_zh": (("两者同一量级，" if 0.1 < n["plain_nobn_he_first_over_last"] < 10 else "")
                  + "梯度不再消失：消失来自初始化，而不只是深度" if he_fixes
                  else "梯度仍然很小：这里的消失不能只归因于初始化"),
        "bn_zh": (f"第 1 层的梯度是最后一个卷积层的 {n['plain_bn_first_over_last']:.0f} 倍，梯度向输入端变大而不是消失"
                  if grows else "第 1 层的梯度没有大于最后一个卷积层的"),
        "degradation_zh": (f"方向与退化现象一致（更深的普通网络更差，加捷径后最好，相邻两者都相差 {LOSS_TIE:g} 以上）"
                           if deeper_worse and shortcut_best
                           else "这次的方向与退化现象不完全一致" + (f"（32 层普通网络不比 8 层差出 {LOSS_TIE:g} 以上）"
                                                                    if not deeper_worse else "（加捷径后不是明显最好）")),
        "chance_zh": chance_loss_zh(losses, n["chance_loss"])}


def chance_loss_zh(losses: list[float], chance: float, near: float = 0.95) -> str:
    """Training losses against guessing (ln 100): 'close to guessing' only when even the lowest is within
    1 - `near` of it; otherwise how far below guessing the lowest one is."""
    lowest = min(losses)
    if lowest >= near * chance:
        return f"损失都还接近随机猜测的 $\\ln 100={chance:.2f}$（最低的 {lowest:.2f} 也在它的 {1 - near:.0%} 以内）"
    return (f"三个损失都低于随机猜测的 $\\ln 100={chance:.2f}$（最低的 {lowest:.2f}，是它的 {lowest / chance:.0%}），"
            "但没有重复实验，不知道它们之间的差别有多少来自随机性")


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
    kappa, beta1, beta2 = 100.0, 0.9, 0.999
    table = r["table"]
    out: dict[str, Any] = {"lr_min": min(r["lr_grid"]), "lr_max": max(r["lr_grid"]), "n_lr": len(r["lr_grid"]),
                           "n_best_at_edge": int((~table.interior.astype(bool)).sum()),
                           "rate_gd": (kappa - 1) / (kappa + 1),
                           "rate_heavy_ball": (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1),
                           # Kingma & Ba's bound: only the current gradient non-zero
                           "adam_bound": (1 - beta1) / math.sqrt(1 - beta2),
                           # any gradient sequence (Cauchy-Schwarz on m_t and v_t, bias corrections -> 1)
                           "adam_bound_general": (1 - beta1) / math.sqrt((1 - beta2) * (1 - beta1 ** 2 / beta2))}
    for row in table.itertuples():
        key = f"{SURFACE_KEYS[row.surface]}_{row.optimizer.lower()}"
        out[f"{key}_loss"], out[f"{key}_lr"] = _f(row.final_loss), _f(row.best_lr)
        out[f"{SURFACE_KEYS[row.surface]}_steps"] = int(row.steps)
    # SGD on f = 1/2 [(x-1)^2 + 100 (y-1)^2] from (-3, 2): each coordinate shrinks by (1 - lr * curvature) per step
    lr, steps = out["quad_sgd_lr"], out["quad_steps"]
    out["quad_sgd_predicted"] = 0.5 * ((4 * (1 - lr) ** steps) ** 2 + kappa * ((1 - kappa * lr) ** steps) ** 2)
    out["quad_sgd_x_factor"] = 1 - lr
    out.update(recipe_numbers())
    out.update(q6_network_numbers(r.get("network")))
    return out


NETWORK_KEYS = {"SGD": "sgd", "SGD+momentum": "momentum", "AdaGrad": "adagrad", "RMSProp": "rmsprop", "Adam": "adam"}


def q6_network_numbers(t: dict | None) -> dict[str, Any]:
    """Five optimizers on the handout network (network_demo), each at its best rate; None values without it."""
    if t is None:
        return {"net_rows": None}
    rows = [{"key": NETWORK_KEYS[r.optimizer], "optimizer": r.optimizer, "lr": _f(r.best_lr),
             "interior": bool(r.interior), "rates_tried": int(r.rates_tried),
             "train_loss": _f(r.train_loss_last_quarter), "test_loss": _f(r.final_test_loss),
             "test_acc": _f(r.final_test_acc)} for r in t["table"].itertuples()]
    sweep = t["sweep"]
    adam = sweep[sweep.optimizer == "Adam"].set_index("lr").score
    from ...core.config import make_config
    target = math.log10(make_config("handout").lr)  # the rate tried nearest the handout's Adam(lr=...)
    handout = min(adam.index, key=lambda lr: abs(math.log10(lr) - target))
    return {"net_rows": rows, "net_n": int(t["n_train"]), "net_epochs": int(t["epochs"]), "net_batch": int(t["batch"]),
            "net_steps": int(t["table"].steps.iloc[0]), "net_n_test": int(t["n_test"]), "net_seed": int(t["seed"]),
            "net_data_zh": data_zh(t["data"]), "net_first_loss": _f(t["table"].first_loss.iloc[0]),
            "net_n_at_edge": sum(not r["interior"] for r in rows),
            "net_adam_handout_lr": _f(handout), "net_adam_handout_loss": _f(adam[handout])}


ZH_OPTIMIZERS = {"sgd": "SGD", "momentum": "动量法", "nesterov": "Nesterov", "adagrad": "AdaGrad",
                 "rmsprop": "RMSProp", "adam": "Adam", "adamw": "AdamW"}


def _ranked(n: dict[str, Any], surface: str) -> list[str]:
    """The optimizers of one surface, lowest final loss first."""
    return sorted(ZH_OPTIMIZERS, key=lambda k: n[f"{surface}_{k}_loss"])


def _names(keys) -> str:
    return "、".join(ZH_OPTIMIZERS[k] for k in keys)


def tie_zh(diff: float, tie: float = LOSS_TIE) -> str:
    """'相差 0.031，不到 0.05' for a difference one seed cannot order."""
    return f"相差 {abs(diff):.3f}，不到 {tie:g}"


def accuracy_se(acc: float, n_test: int) -> float:
    """Standard error of a test accuracy measured on n_test images (binomial)."""
    return math.sqrt(acc * (1 - acc) / n_test)


def chance_acc_zh(accs: list[float], n_test: int | None = None, classes: int = CHANCE_CLASSES) -> str:
    """Test accuracies against guessing (1/classes): 'close to guessing' only under NEAR_CHANCE times it;
    otherwise how many times guessing the best one is, with its standard error when `n_test` is known."""
    chance, best = 1 / classes, max(accs)
    if best < NEAR_CHANCE * chance:
        return f"测试准确率都不到随机猜测（{chance:.0%}）的 {NEAR_CHANCE:g} 倍，仍接近随机猜测"
    se = f"（{n_test:,} 张测试图，标准误约 {100 * accuracy_se(best, n_test):.1f} 个百分点）" if n_test else ""
    return (f"最高的测试准确率 {best:.1%} 是随机猜测（{chance:.0%}）的 {best / chance:.1f} 倍{se}："
            "已经学到了一些东西，但离有用的分类器还很远")


def rate_tex(lr: float) -> str:
    """A learning rate in LaTeX: $10^{-4.5}$ when it sits on a quarter-decade grid, else $a\\times10^{k}$."""
    exponent = math.log10(lr)
    if abs(4 * exponent - round(4 * exponent)) < 1e-9:
        e = round(4 * exponent) / 4
        return f"$10^{{{e:g}}}$" if e != 0 else "$1$"
    return f"${format_value(lr, 'tex2')}$"


def q6_network_wording(n: dict[str, Any]) -> dict[str, str | None]:
    """Answer (6) on the handout network: the optimizers ranked by training loss and by test accuracy, and the
    handout's Adam rate against Adam's best, as the numbers say; one seed, so small gaps are called ties."""
    rows = n.get("net_rows")
    if not rows:
        return {"net_rows_zh": None, "net_zh": None}
    listed = "；".join(f"{ZH_OPTIMIZERS[r['key']]}（最佳学习率 {rate_tex(r['lr'])}，试了 {r['rates_tried']} 个）最后 1/4 的迭代步"
                      f"的平均训练损失 {r['train_loss']:.3f}，测试损失 {r['test_loss']:.3f}，测试准确率 {r['test_acc']:.1%}"
                      for r in rows)
    by = {r["key"]: r for r in rows}
    ranked = sorted(rows, key=lambda r: r["train_loss"])
    tie = LOSS_TIE
    first = [r for r in ranked if r["train_loss"] - ranked[0]["train_loss"] < tie]
    parts = [("训练损失最低的是 " if len(first) == 1 else f"训练损失最低、彼此相差不到 {tie:g} 的是 ")
             + _names(r["key"] for r in first)]
    gap = by["sgd"]["train_loss"] - by["momentum"]["train_loss"]
    parts.append(f"动量把 SGD 的训练损失降低了 {gap:.3f}" if gap >= tie else
                 (f"动量没有让 SGD 的训练损失明显降低（{tie_zh(gap)}）" if gap > -tie else f"动量反而让训练损失高了 {-gap:.3f}"))
    parts += _adaptive_vs_sgd_zh(rows, n.get("net_n_test"))
    parts.append(_handout_adam_rate_zh(n, by["adam"]))
    edge = n["net_n_at_edge"]
    parts.append("每个最佳学习率都在试过的范围内部" if edge == 0 else
                 f"有 {edge} 个最佳学习率落在试过的范围端点上（扩展次数用完），它们的排名不可靠")
    return {"net_rows_zh": listed, "net_zh": "；".join(parts)}


def _adaptive_vs_sgd_zh(rows: list[dict], n_test: int | None) -> list[str]:
    """The adaptive methods against SGD with and without momentum, on the handout network: training loss, test
    loss (each with the one-seed tie) and test accuracy, and why the two losses are not subtracted here."""
    tie = LOSS_TIE
    adaptive = [r for r in rows if r["key"] in ("adagrad", "rmsprop", "adam")]
    sgd_family = [r for r in rows if r["key"] in ("sgd", "momentum")]
    d_train = min(r["train_loss"] for r in sgd_family) - min(r["train_loss"] for r in adaptive)
    d_test = min(r["test_loss"] for r in sgd_family) - min(r["test_loss"] for r in adaptive)
    out = []
    if abs(d_train) < tie:
        out.append(f"自适应方法与 SGD 类的最低训练损失{tie_zh(d_train)}，分不出快慢")
    else:
        out.append(f"自适应方法的最低训练损失比 SGD 类{'低' if d_train > 0 else '高'} {abs(d_train):.2f}")
    out.append(f"最低测试损失{tie_zh(d_test)}，一个 seed 分不出高低" if abs(d_test) < tie else
               f"最低测试损失{'低' if d_test > 0 else '高'} {abs(d_test):.2f}")
    out.append("这里的训练损失是 train 模式下最后 1/4 迭代步的平均，测试损失是训练结束时 eval 模式下的值（见第 (2) 题），"
               "两者之差不是泛化差距，这个实验也没有逐 epoch 比较，所以不能据此判断过拟合")
    acc = lambda group: (min(r["test_acc"] for r in group), max(r["test_acc"] for r in group))
    (a_lo, a_hi), (s_lo, s_hi) = acc(adaptive), acc(sgd_family)
    order = ("自适应方法的都高于 SGD 类" if a_lo > s_hi else "SGD 类的都高于自适应方法" if s_lo > a_hi else "两组有重叠")
    closest = (a_lo - s_hi) if a_lo > s_hi else (s_lo - a_hi) if s_lo > a_hi else None
    if closest is not None and n_test:
        two_se = 2 * math.hypot(accuracy_se(a_lo, n_test), accuracy_se(s_hi, n_test))
        if closest < two_se:
            order += f"，但两组最接近的两个只差 {100 * closest:.1f} 个百分点，在两个标准误（{100 * two_se:.1f} 个百分点）以内"
    out.append(f"测试准确率自适应方法 {a_lo:.1%}–{a_hi:.1%}、SGD 类 {s_lo:.1%}–{s_hi:.1%}，{order}；"
               + chance_acc_zh([r["test_acc"] for r in rows], n_test) + "；只有一个 seed，这些差别不能当作结论")
    return out


def _handout_adam_rate_zh(n: dict[str, Any], adam: dict) -> str:
    """The handout's Adam rate against Adam's best rate on the sweep's half-decade grid."""
    from .q6_optimizers import NETWORK_LR_STEP

    handout, best = n["net_adam_handout_lr"], adam["lr"]
    if handout != best:
        return (f"讲义的学习率 {rate_tex(handout)} 下 Adam 的训练损失是 {n['net_adam_handout_loss']:.3f}，"
                f"比它在最佳学习率 {rate_tex(best)} 下的 {adam['train_loss']:.3f} 高 "
                f"{n['net_adam_handout_loss'] - adam['train_loss']:.3f}：在这么少的步数里讲义的学习率偏小，"
                f"讲义的 {n['handout_steps']:,} 步能弥补多少，这个短实验回答不了")
    low, high = math.log10(best) - NETWORK_LR_STEP, math.log10(best) + NETWORK_LR_STEP
    where = (f"；更细的网格上 Adam 的最佳值可以在 $10^{{{low:g}}}$ 到 $10^{{{high:g}}}$ 之间的任何地方，"
             f"不能说恰好是 {rate_tex(handout)}" if adam["interior"] else "，而且它落在试过的范围端点上")
    return (f"讲义的学习率 {rate_tex(handout)} 也是 Adam 在这里最好的学习率，但这只说明它在试过的 {adam['rates_tried']} 个"
            f"相隔 {NETWORK_LR_STEP:g} 个数量级的学习率中最好（网格的起点取自同一设置下更早的一次扫描，"
            f"见 `q6_optimizers.NETWORK_OPTIMIZERS` 的注释）" + where)


def q6_wording(n: dict[str, Any]) -> dict[str, str]:
    """The sentences of answer (6) that rank optimizers or compare surfaces, chosen by the numbers."""
    quad, rot = _ranked(n, "quad"), _ranked(n, "rot")
    better_than_sgd = [k for k in ("momentum", "nesterov", "adam") if n[f"quad_{k}_loss"] < 1e-3 * n["quad_sgd_loss"]]
    lost = [k for k in ("adagrad", "rmsprop", "adam") if n[f"rot_{k}_loss"] > 1e3 * max(n[f"quad_{k}_loss"], 1e-300)]
    worse_than_sgd = [k for k in ("adagrad", "rmsprop", "adam", "adamw") if n[f"rot_{k}_loss"] > n["rot_sgd_loss"]]
    stuck = [k for k in ZH_OPTIMIZERS if n[f"rosen_{k}_loss"] > 1e-2]
    edge = n["n_best_at_edge"]
    surfaces = {"quad": "二次函数", "rot": "旋转的二次函数", "rosen": "Rosenbrock"}
    above_one = [f"{ZH_OPTIMIZERS[k]}（{surfaces[s]}，{n[f'{s}_{k}_lr']:.3g}）" for s in surfaces for k in ZH_OPTIMIZERS
                 if n[f"{s}_{k}_lr"] > 1]
    return {
        "above_one_zh": (f"最佳学习率大于 1 的有 {'、'.join(above_one)}：网格若只到 1，它们会落在端点上，"
                         "在那样的网格上得出的结论（例如某个优化器停在峡谷里）可能只是网格太窄造成的，"
                         "所以这里的网格一直扩到每个最佳值都在内部。" if above_one
                         else "所有最佳学习率都不大于 1。"),
        "all_interior_zh": ("每个优化器在每个曲面上的最佳学习率都在网格内部，不在两端。" if edge == 0
                            else f"有 {edge} 个最佳学习率落在网格的端点上，它们可能只是网格范围造成的假象。"),
        "quad_best_zh": f"最终损失最低的两个是 {_names(quad[:2])}",
        "quad_vs_sgd_zh": (f"{_names(better_than_sgd)} 的最终损失都比 SGD 低三个数量级以上" if better_than_sgd
                           else "动量法、Nesterov 和 Adam 都没有比 SGD 低三个数量级"),
        "rot_best_zh": f"旋转后最终损失最低的两个是 {_names(rot[:2])}",
        "rot_lost_zh": (f"{_names(lost)} 的最终损失比不旋转时高三个数量级以上" if lost
                        else "AdaGrad、RMSProp 和 Adam 的最终损失都没有比不旋转时高三个数量级"),
        "rot_worse_than_sgd_zh": (f"{_names(worse_than_sgd)} 旋转后甚至不如 SGD" if worse_than_sgd
                                  else "自适应方法旋转后仍都不差于 SGD"),
        "rosen_stuck_zh": (f"{_names(stuck)} 最后仍停在损失高于 0.01 的弯曲峡谷里" if stuck
                           else "所有优化器最后的损失都低于 0.01"),
        "rosen_best_zh": f"最终损失最低的是 {_names(_ranked(n, 'rosen')[:2])}",
        **q6_network_wording(n)}


def recipe_numbers(optimizer_rung: str = "+sgd", preset: str = "+onecycle") -> dict[str, Any]:
    """The project's own optimizer recipe, from its presets: the rung that switches from Adam to SGD, and
    `preset`, the last of the three rungs (optimizer, weight decay, schedule) that make up the recipe."""
    from ...core.config import PARENT, make_config

    cfg, handout = make_config(preset), make_config("handout")
    wd_rung = next(name for name, parent in PARENT.items() if parent == optimizer_rung)
    return {"recipe_sgd_preset": optimizer_rung, "recipe_wd_preset": wd_rung,
            "recipe_preset": preset, "recipe_momentum": cfg.momentum, "recipe_wd": cfg.weight_decay,
            "recipe_batch": cfg.batch_size, "recipe_lr": cfg.lr, "recipe_lr_per_256": cfg.lr * 256 / cfg.batch_size,
            "recipe_warmup_share": cfg.warmup, "handout_lr": handout.lr,
            "handout_steps": (steps := handout.epochs * -(-SPLIT_SIZES["train"] // handout.batch_size)),
            "handout_displacement": steps * handout.lr}


def q1_wording(n: dict[str, Any]) -> dict[str, str]:
    """Answer (1): whether the measured noise follows the sampling formula, and what the training runs at
    several batch sizes show, as the numbers say."""
    agree = 0.9 <= n["ratio_min"] and n["ratio_max"] <= 1.1
    out = {"agree_zh": ("即 $1/B$ 规律（含有限总体修正）与测量一致" if agree
                        else "比值偏离 1 超过 10%，抽样次数不够或测量有误，不能说与公式一致")}
    rows = n.get("train_rows")
    if not rows:
        return {**out, "train_rows_zh": None, "train_zh": None}
    out["train_rows_zh"] = "；".join(
        f"$B={r['batch_size']}$（学习率 {r['lr']:g}）走 {r['steps']} 步，最后 1/4 的迭代步的平均训练损失 {r['train_loss']:.3f}，"
        f"测试损失 {r['test_loss']:.3f}，测试准确率 {r['test_acc']:.1%}" for r in rows)
    rows = sorted(rows, key=lambda r: r["batch_size"])
    parts = [batch_trend_zh(rows), batch_confounders_zh(rows, n["train_n"], n["train_epochs"]),
             chance_acc_zh([r["test_acc"] for r in rows])]
    parts += [bn_eval_zh(r) for r in rows if r["test_loss"] > EVAL_BN_RATIO * r["train_loss"]]
    out["train_zh"] = "。".join(parts)
    return out


EVAL_BN_RATIO = 1.5  # a test loss this many times the training loss after a few dozen steps is not generalization


def batch_trend_zh(rows: list[dict]) -> str:
    """Training loss across batch sizes (rows sorted by batch size), each neighbouring pair compared with the
    one-seed tie: only differences of LOSS_TIE or more are given a direction."""
    pairs = []
    for a, b in zip(rows, rows[1:]):
        d = b["train_loss"] - a["train_loss"]
        pairs.append((a["batch_size"], b["batch_size"], d))
    said = [f"$B={a}$ 与 $B={b}$ 的训练损失{tie_zh(d)}，一个种子分不出先后" if abs(d) < LOSS_TIE else
            f"$B={b}$ 的训练损失比 $B={a}$ {'高' if d > 0 else '低'} {abs(d):.3f}" for a, b, d in pairs]
    ordered = [d for _, _, d in pairs if abs(d) >= LOSS_TIE]
    if not ordered:
        summary = "各批量大小的训练损失都分不出先后"
    elif all(d > 0 for d in ordered):
        summary = ("分得出先后的，都是批量大小更大、步数更少的一方训练损失更高：看到同样多的图像时，"
                   "按线性缩放放大的学习率没有补回少走的步数")
    elif all(d < 0 for d in ordered):
        summary = "分得出先后的，都是批量大小更大的一方训练损失更低"
    else:
        summary = "训练损失没有随批量大小单调变化"
    return "；".join(said) + "。" + summary


def batch_confounders_zh(rows: list[dict], n_train: int, epochs: int) -> str:
    """Why these runs cannot place the gradient noise scale: the largest batch's rate is scaled without the
    warm-up that the linear scaling rule asks for, it is a large share of the images, and there is one seed."""
    big = rows[-1]
    per_epoch = big["steps"] // epochs
    return (f"这组结果不能说明哪个批量大小已超过梯度噪声尺度：最大的 $B={big['batch_size']}$ 用了线性缩放后的学习率 "
            f"{big['lr']:g} 却没有预热（上面的线性缩放规则要求预热），它是 {n_train:,} 张训练图的 "
            f"{big['batch_size'] / n_train:.0%}，每个 epoch 只走 {per_epoch} 步；每种批量大小也只跑了一个种子")


def bn_eval_zh(row: dict) -> str:
    """A test loss far above the training loss after few steps: BN's running statistics (momentum from the
    handout network's own BN layers) have only partly replaced their initial values (mean 0, variance 1)."""
    from torch import nn

    from ...core.models import build_model
    momentum = next(m.momentum for m in build_model("handout_resnet18").modules() if isinstance(m, nn.BatchNorm2d))
    steps, kept = row["steps"], (1 - momentum) ** row["steps"]
    return (f"$B={row['batch_size']}$ 的测试损失 {row['test_loss']:.1f} 是它训练损失的 {row['test_loss'] / row['train_loss']:.0f} 倍："
            f"它只走了 {steps} 步，BN 的滑动平均（running 统计量，动量 {momentum:g}）只更新了 $1-{1 - momentum:g}^{{{steps}}}"
            f"\\approx{1 - kept:.2f}$，其余 {kept:.0%} 仍是初始值（均值 0、方差 1），评估模式（eval mode）下的归一化因而失准。"
            "所以它更可能是评估模式下 BN 的假象，而不是模型在测试集上学坏了（本演示没有在训练模式下测试来证实这一点，"
            "第 01 章的 `bn_mode_check` 做的正是这种比较）")


def q3_wording(n: dict[str, Any]) -> dict[str, str]:
    """Answer (3): the sentences about the regularization demo's outcome, chosen by its numbers."""
    accs = {k: n[f"{k}_test_acc"] for k in ("none", "augment", "wd")}
    overfits = n["none_min_epoch"] < n["epochs"]
    return {
        "none_zh": (f"无正则化时测试损失在第 {n['none_min_epoch']} 个 epoch 最低、之后回升，而训练损失继续下降：按损失看是典型的过拟合"
                    if overfits else f"无正则化时测试损失在 {n['epochs']} 个 epoch 内没有回升，这次没有看到过拟合的典型信号"),
        "augment_zh": ("数据增强把差距" + ("缩小" if n["augment_gap"] < n["none_gap"] else "扩大")
                       + f"到无正则化时的 {n['augment_gap_share']:.0%}"
                       + ("，测试准确率也是三者中最高的" if accs["augment"] == max(accs.values())
                          else "，但测试准确率不是三者中最高的")),
        "wd_zh": ("这个权重衰减值" + ("缩小" if n["wd_gap"] < n["none_gap"] else "没有缩小") + "了差距，"
                  + ("也提高了测试准确率" if accs["wd"] > accs["none"] else "但没有提高测试准确率"))}


# Per question: the sentences of its answer that state an outcome, derived from its numbers when an answer is
# rendered (so the wording follows whatever run produced the numbers; theory.json holds numbers only).
WORDING: dict[str, Callable[[dict[str, Any]], dict[str, str]]] = {
    "q1": q1_wording, "q3": q3_wording, "q4": q4_wording, "q6": q6_wording}


def cpu_run_numbers(run_dir: str | Path | None = None) -> dict[str, Any]:
    """The handout network's own train/test figures from the committed CPU run on the full data
    (cvlab.coursework.baseline.HANDOUT_CPU_RUN), read when an answer is rendered so the answer always
    matches the committed files; every value None when the run is missing."""
    from ...core.errors import RunDirError
    from ...core.runs import load_run
    from ..baseline import HANDOUT_CPU_RUN, cpu_run_label_zh, curve_summary, device_zh, test_trend_zh

    keys = ("label_zh", "epochs", "planned_epochs", "n_train", "n_test", "device", "seed", "train_loss", "test_loss",
            "train_acc", "test_acc", "acc_gap_pp", "min_epoch", "rise", "trend_zh", "seconds_per_epoch")
    try:
        run = load_run(run_dir or HANDOUT_CPU_RUN)
        s = curve_summary(run.history)
    except (RunDirError, OSError, KeyError, ValueError):
        return {f"cpu_{k}": None for k in keys}
    ds = run.metrics.get("dataset", {})
    values = {"label_zh": cpu_run_label_zh(run), "epochs": s["epochs"],
              "planned_epochs": run.metrics.get("epochs_planned") or run.config.get("epochs"),
              "n_train": ds.get("n_train"), "n_test": ds.get("n_test"), "device": device_zh(run.metrics.get("device")),
              "seed": run.config.get("seed"), "train_loss": s["final_train_loss"], "test_loss": s["final_test_loss"],
              "train_acc": s["final_train_acc"], "test_acc": s["final_test_acc"], "acc_gap_pp": 100 * s["acc_gap"],
              "min_epoch": s["min_test_loss_epoch"], "rise": s["test_loss_rise"], "trend_zh": test_trend_zh(s),
              "seconds_per_epoch": float(run.history.epoch_seconds.mean())}
    return {f"cpu_{k}": v for k, v in values.items()}


def with_wording(results: dict[str, Any]) -> dict[str, Any]:
    """`results` with each question's derived sentences added (a question not computed stays None), and q3
    with the committed CPU run's figures (cpu_run_numbers)."""
    out = dict(results)
    if out.get("q3") is not None:
        out["q3"] = {**out["q3"], **cpu_run_numbers()}
    for key, wording in WORDING.items():
        if out.get(key) is not None:
            try:
                out[key] = {**out[key], **wording(out[key])}
            except KeyError:  # numbers of an older results file: its answers keep no derived sentences
                pass
    return out


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
            log: Callable[[str], None] = print, only: tuple[str, ...] = (),
            previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the six demos at one setting (`data` None: q1, q3 and q4 are skipped) and return their numbers;
    `baseline_run` (notebook 01's run directory) adds the handout ResNet-18's own gap to q3. With `only`
    (e.g. ("q4", "q6")) just those demos run and the other questions keep their numbers from `previous`,
    which must have been computed at the same setting (quick, seed, data)."""
    from . import q1_batch_size, q2_epoch, q3_overfitting, q4_resnet, q5_activations, q6_optimizers

    demos = {"q1": lambda: {**q1_batch_size.batch_size_demo(fig_dir, data, quick=quick, seed=seed),
                            "training": q1_batch_size.batch_training_demo(fig_dir, data, quick=quick, seed=seed)},
             "q2": lambda: q2_epoch.epoch_demo(fig_dir, seed=seed),
             "q3": lambda: q3_overfitting.regularization_demo(fig_dir, data, quick=quick, seed=seed),
             "q4": lambda: q4_resnet.residual_demo(fig_dir, data, quick=quick, seed=seed),
             "q5": lambda: q5_activations.activation_demo(fig_dir, quick=quick, seed=seed),
             "q6": lambda: {**q6_optimizers.optimizer_demo(fig_dir, quick=quick),
                            "network": q6_optimizers.network_demo(fig_dir, data, quick=quick, seed=seed) if data else None}}
    results: dict[str, Any] = {"setting": setting(data, quick, seed)}
    if only:
        if previous is None or any(previous["setting"].get(k) != results["setting"][k] for k in ("quick", "seed", "data")):
            raise ValueError("recomputing some questions needs previous results at the same quick/seed/data setting")
        results.update({k: v for k, v in previous.items() if k != "setting" and k not in only})
    for key, demo in demos.items():
        if only and key not in only:
            continue
        if data is None and key in NEEDS_DATA:
            results[key] = None
            log(f"{key}: skipped (no CIFAR-100)")
            continue
        log(f"{key}: running")
        results[key] = EXTRACT[key](demo()) if key != "q3" else q3_numbers(demo(), baseline_gap(baseline_run))
    return {k: results[k] for k in ("setting", *demos) if k in results}  # question order, also with `only`


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
    results = with_wording(results)
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
