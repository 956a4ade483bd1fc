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
