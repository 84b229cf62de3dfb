"""explain: the symbolic formula evaluates to the planner's own number."""

import pytest

from planner.config import Parallel, TrainSetup
from planner.explain import QUANTITIES, explain
from presets import load_model


@pytest.mark.parametrize("name", ["llama-3-8b", "gpt2", "qwen2.5-7b", "opt-1.3b", "bloom-560m",
                                  "falcon-40b", "gemma-7b"])
@pytest.mark.parametrize("quantity", list(QUANTITIES))
def test_explanations_agree_with_the_planner(name, quantity):
    cfg = load_model(name)
    exp = explain(quantity, cfg, setup=TrainSetup(seq_len=2048, grad_accum=2),
                  par=Parallel(dp=8, zero=2, tp=2 if name != "falcon-40b" else 8))
    assert exp.matches, (exp.result, exp.planner_value)
    assert exp.formula and exp.values


def test_explain_is_lazy_about_sympy():
    import subprocess, sys
    from helpers import ROOT
    code = "import planner.explain, sys; print('sympy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
