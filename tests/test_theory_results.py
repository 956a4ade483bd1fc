"""answers/ is rendered from answers/templates/ with docs/results/theory.json: every number in an answer
comes from the committed results, and the two never disagree."""
from __future__ import annotations

import json
import re

import pytest

from cvlab.coursework.theory import results as tr


def test_answers_agree_with_the_committed_results():
    results = tr.read_results(tr.RESULTS_FILE)
    stale = tr.stale_answers(results)
    assert not stale, (f"answers/{stale[0]}.md differs from answers/templates/{stale[0]}.md rendered with "
                       "docs/results/theory.json: edit the template and run `python -m cvlab theory --render-only` "
                       "(or `python -m cvlab theory` to recompute the numbers)")


def test_committed_results_are_the_reports_setting():
    setting = tr.read_results(tr.RESULTS_FILE)["setting"]
    assert setting["quick"] is False and setting["synthetic"] is False and setting["seed"] == 0
    assert "CIFAR-100" in setting["data"]


def test_every_placeholder_names_a_committed_number():
    results = tr.with_wording(tr.read_results(tr.RESULTS_FILE))  # numbers, and sentences derived from them
    for name in tr.QUESTIONS:
        template = (tr.TEMPLATES_DIR / f"{name}.md").read_text(encoding="utf-8")
        paths = [m.group(1) for m in tr.PLACEHOLDER.finditer(template)]
        assert paths, f"{name}: a template without measured numbers"
        for path in paths:
            assert path.split(".")[0] in ("setting", name[:2]), f"{name} quotes {path} from another question"
            tr.lookup(results, path)  # KeyError names a placeholder the results do not hold


def test_no_leftover_braces_after_rendering():
    results = tr.read_results(tr.RESULTS_FILE)
    for name in tr.QUESTIONS:
        text = tr.render_answer(name, results)
        assert "{{" not in text, f"{name}: {text[text.index('{{'):][:60]}"


def test_conditional_lines():
    results = {"q3": {"run": "r1", "gone": None}}
    text = "a\n{{?q3.run}}with {{q3.run}}\n{{!q3.run}}without\n{{?q3.gone}}never\n{{!q3.gone}}shown\n"
    assert tr.render(text, results) == "a\nwith r1\nshown\n"


def test_a_question_not_computed_says_so():
    results = json.loads(json.dumps(tr.read_results(tr.RESULTS_FILE)))
    results["q1"] = None
    assert tr.MISSING in tr.render_answer("q1_batch_size", results)
    assert tr.MISSING not in tr.render_answer("q2_epoch", results)


@pytest.mark.parametrize("value, spec, text", [
    (2.68e-15, "tex1", r"2.7\times10^{-15}"), (0.0976, "tex1", "0.098"), (8.91, "tex1", "8.9"),
    (9.96e-5, "tex1", r"1.0\times10^{-4}"), (1e-4, "tex0", r"1\times10^{-4}"), (0, "tex1", "0"),
    (50000, "texint", "50{,}000"), (4900, ",", "4,900"), (0.1502, ".1%", "15.0%"), (3.1623, ".2f", "3.16"),
])
def test_format_value(value, spec, text):
    assert tr.format_value(value, spec) == text


def test_differences_name_what_changed():
    a = {"setting": {"quick": True}, "q1": {"x": 1.0, "y": "CIFAR"}, "q2": None}
    b = {"setting": {"quick": False}, "q1": {"x": 1.0 + 1e-12, "y": "CIFAR"}, "q2": {"z": 3}}
    assert tr.differences(a, a) == []
    assert tr.differences(a, b) == [("q2.z", None, 3)]  # the setting is not compared; 1e-12 is within tolerance


def test_templates_keep_the_handouts_numbers_out_of_typed_text():
    """Measured quantities in the templates are placeholders: no typed-in decimal like 0.70 or 1.07 outside
    formulas' constants (a crude check: numbers with 2+ decimals only appear inside placeholders)."""
    allowed = {"0.1307", "0.3081", "28.54", "27.94", "25.03", "0.25", "0.01", "0.02", "0.999", "0.5071"}  # constants, citations
    for name in tr.QUESTIONS:
        text = tr.PLACEHOLDER.sub("", (tr.TEMPLATES_DIR / f"{name}.md").read_text(encoding="utf-8"))
        body = text.split("**参考文献**")[0]
        typed = set(re.findall(r"(?<![\w.])\d+\.\d{2,}(?![\w.])", body)) - allowed
        assert not typed, f"{name}: typed-in numbers {sorted(typed)}; take them from the results"


def test_one_theory_module_per_answer():
    from pathlib import Path
    package = Path(tr.__file__).parent
    for name in tr.QUESTIONS:
        assert (package / f"{name}.py").is_file(), f"cvlab/coursework/theory/{name}.py mirrors answers/{name}.md"


def test_every_committed_best_learning_rate_is_inside_the_grid():
    """A best rate at the grid's end says only that the grid was too narrow (issue 19, item 4)."""
    q6 = tr.read_results(tr.RESULTS_FILE)["q6"]
    rates = {k: v for k, v in q6.items() if k.endswith("_lr") and k.split("_")[0] in ("quad", "rot", "rosen")}
    assert len(rates) == 21 and q6["n_best_at_edge"] == 0
    assert all(q6["lr_min"] < lr < q6["lr_max"] for lr in rates.values()), rates


def test_wording_follows_the_numbers():
    """Sentences that state an outcome are derived from the numbers: change a number, the sentence changes."""
    results = json.loads(json.dumps(tr.read_results(tr.RESULTS_FILE)))
    text = tr.render_answer("q3_overfitting", results)
    assert "测试准确率也是三者中最高的" in text
    results["q3"]["none_test_acc"] = 0.99
    assert "但测试准确率不是三者中最高的" in tr.render_answer("q3_overfitting", results)
    results["q4"]["plain32_loss"] = results["q4"]["plain8_loss"] - 0.1
    assert "不完全一致" in tr.render_answer("q4_resnet", results)


def test_adam_bounds():
    q6 = tr.read_results(tr.RESULTS_FILE)["q6"]
    assert q6["adam_bound"] == pytest.approx(3.162, abs=1e-3)          # Kingma & Ba: one non-zero gradient
    assert q6["adam_bound_general"] == pytest.approx(7.27, abs=1e-2)   # Cauchy-Schwarz, any gradient sequence


def _network_numbers(**changes):
    rows = [{"key": k, "optimizer": k, "lr": lr, "interior": True, "rates_tried": 4, "train_loss": loss,
             "test_loss": 4.3, "test_acc": acc}
            for k, lr, loss, acc in (("sgd", 0.3, 4.0, 0.03), ("momentum", 0.03, 3.8, 0.05), ("adagrad", 0.01, 3.78, 0.06),
                                     ("rmsprop", 0.001, 3.9, 0.04), ("adam", 0.001, 3.7, 0.07))]
    return {"net_rows": rows, "net_adam_handout_lr": 1e-4, "net_adam_handout_loss": 4.2, "net_n_at_edge": 0,
            "handout_steps": 4900, **changes}


def test_network_wording_follows_the_numbers():
    text = tr.q6_network_wording(_network_numbers())["net_zh"]
    assert "训练损失最低的是 Adam；" in text and "动量把 SGD 的训练损失降低了 0.200" in text
    assert "自适应方法的最低训练损失比 SGD 类低 0.10，最低测试损失却只低 0.00" in text   # all test losses 4.3
    assert "测试准确率最高的是 Adam（7.0%）" in text and "高 0.500" in text and "都在试过的范围内部" in text
    n = _network_numbers()
    n["net_rows"][2]["train_loss"] = 3.72                                  # AdaGrad within 0.05 of Adam: a tie
    n["net_rows"][1]["train_loss"] = 4.02                                  # momentum no better than SGD
    n["net_adam_handout_lr"] = 0.001                                       # the handout's rate is Adam's best
    n["net_n_at_edge"] = 1
    for r in n["net_rows"]:
        r["test_acc"] = 0.02
    text = tr.q6_network_wording(n)["net_zh"]
    assert "彼此相差不到 0.05 的是 Adam、AdaGrad；" in text and "动量没有让 SGD 的训练损失明显降低" in text
    assert "接近随机猜测" in text and "正是 Adam 在这里的最佳学习率" in text and "有 1 个最佳学习率落在" in text
    assert tr.q6_network_wording({"net_rows": None}) == {"net_rows_zh": None, "net_zh": None}


def test_q6_without_images_says_how_to_compute_the_network_part():
    results = json.loads(json.dumps(tr.read_results(tr.RESULTS_FILE)))
    results["q6"].update(tr.q6_network_numbers(None))
    text = tr.render_answer("q6_optimizers", results)
    assert "没有 `network_demo` 的结果" in text and tr.MISSING not in text
