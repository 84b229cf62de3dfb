"""The runtime's decoder: parameter counts equal the planner's; pieces behave as specified."""

import pytest
import torch

from planner.params import count_params
from presets import load_model, preset_files
from runtime.model import Decoder, _RMSNormFn, rope_inv_freq
from planner.layout import RUNTIME_POSITIONS

SUPPORTED = [n for n in preset_files("models") if load_model(n).position in RUNTIME_POSITIONS]


@pytest.mark.parametrize("name", SUPPORTED)
def test_runtime_parameter_count_equals_the_planner(name):
    cfg = load_model(name)
    with torch.device("meta"):
        model = Decoder(cfg)
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg).total


def test_rmsnorm_backward_matches_autograd():
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _RMSNormFn.apply(a, b, 1e-6), (x, w))


def test_rope_scaling_changes_only_low_frequencies():
    base = load_model("llama-3-8b")
    scaled = load_model("llama-3.1-8b")
    a, b = rope_inv_freq(base), rope_inv_freq(scaled)
    assert torch.allclose(a[:8], b[:8])          # high frequencies kept (wavelength < 2048)
    assert torch.allclose(a[-4:] / 8, b[-4:])     # low frequencies interpolated by the factor


def test_sliding_window_and_causality():
    # One layer with a window of 4: token 0 reaches positions 0-3 and nothing after them;
    # changing the last token changes nothing before it.
    cfg = load_model("tiny").replace(num_layers=1, sliding_window=4)
    torch.manual_seed(0)
    model = Decoder(cfg).eval()
    x = torch.randint(0, 256, (1, 12))
    first, last = x.clone(), x.clone()
    first[0, 0] = (first[0, 0] + 1) % 256
    last[0, -1] = (last[0, -1] + 1) % 256
    with torch.no_grad():
        base, a, b = model(x), model(first), model(last)
    assert not torch.allclose(base[0, :4], a[0, :4])
    assert torch.allclose(base[0, 4:], a[0, 4:])
    assert torch.allclose(base[0, :-1], b[0, :-1])
