"""Training-only fast paths (fused CBAM, GEMM weight gradients) compute what the plain modules do."""

import copy

import pytest
import torch

from models import CBAM, build_model
from models.conv_gemm import Conv2d, to_plain_conv2d, weight_grad_gemm
from models.fused import set_fused_training
from models.cbam_fused import fused_cbam


def _cbam(channels: int, seed: int = 0, dtype=torch.float64) -> CBAM:
    torch.manual_seed(seed)
    module = CBAM(channels, reduction=4).to(dtype)
    for p in module.parameters():  # larger than the default init, so that every gate matters
        p.data.normal_(0, 0.5)
    return module


def _fused(module: CBAM, x: torch.Tensor) -> torch.Tensor:
    return fused_cbam(x, module.channel.fc1.weight, module.channel.fc2.weight, module.spatial.conv.weight)


def _value_and_grads(fn, module: CBAM, x: torch.Tensor, upstream: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    out = fn(module, x)
    out.backward(upstream)
    return out.detach(), x.grad, [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_matches_modules_in_float64(layout):
    module = _cbam(16)
    torch.manual_seed(1)
    x = torch.randn(3, 16, 9, 11, dtype=torch.float64).contiguous(memory_format=layout)
    upstream = torch.randn(3, 16, 9, 11, dtype=torch.float64)
    ref = _value_and_grads(lambda m, v: m.spatial(m.channel(v)), module, x, upstream)
    got = _value_and_grads(_fused, module, x, upstream)
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1])
    for g, r in zip(got[2], ref[2]):
        torch.testing.assert_close(g, r)
    assert got[1].is_contiguous(memory_format=layout)


def test_fused_backward_passes_gradcheck():
    module = _cbam(4, seed=2)
    torch.manual_seed(3)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    weights = [p.detach().clone().requires_grad_() for p in
               (module.channel.fc1.weight, module.channel.fc2.weight, module.spatial.conv.weight)]
    assert torch.autograd.gradcheck(fused_cbam, (x, *weights))


def test_fused_in_bfloat16_autocast_stays_close_to_float32():
    """The training path: bfloat16 activations, float32 weights, channels_last."""
    module = _cbam(32, dtype=torch.float32)
    torch.manual_seed(4)
    x = torch.randn(4, 32, 14, 14).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(4, 32, 14, 14)
    ref = _value_and_grads(lambda m, v: m.spatial(m.channel(v)), module, x, upstream)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _value_and_grads(lambda m, v: _fused(m, v.to(torch.bfloat16)).float(), module, x, upstream)
    assert (got[0] - ref[0]).abs().max() < 0.05 * ref[0].abs().max()
    for g, r in zip(got[2], ref[2]):   # weight gradients: same direction, similar size
        cos = torch.nn.functional.cosine_similarity(g.flatten(), r.flatten(), dim=0)
        assert cos > 0.98 and torch.isfinite(g).all()


@pytest.mark.parametrize("path", ["modules", "fused"])
def test_float16_sums_do_not_overflow(path):
    """A 56x56 map of activations around 30 sums past float16's 65,504; CUDA AMP trains in float16."""
    module = _cbam(8, dtype=torch.float32)
    x = (30 + torch.rand(2, 8, 56, 56)).half()
    fn = (lambda m, v: m.spatial(m.channel(v))) if path == "modules" else _fused
    ref = _value_and_grads(lambda m, v: m.spatial(m.channel(v)), module, x.float(), torch.ones(2, 8, 56, 56))
    with torch.autocast("cpu", enabled=False):
        out = fn(module.half(), x.detach().clone().requires_grad_())
    module.float()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref[0], atol=0.1, rtol=0.02)


def test_tied_maxima_keep_the_total_gradient():
    """Ties (common in bfloat16): amax splits the gradient, the fused path gives it to one element."""
    module = _cbam(8, seed=5)
    x = torch.ones(2, 8, 4, 4, dtype=torch.float64)            # every maximum is a tie
    upstream = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    ref = _value_and_grads(lambda m, v: m.spatial(m.channel(v)), module, x, upstream)
    got = _value_and_grads(_fused, module, x, upstream)
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1].sum((2, 3)), ref[1].sum((2, 3)))
    for g, r in zip(got[2], ref[2]):
        torch.testing.assert_close(g, r)


def _uses_fused_node(model: torch.nn.Module, x: torch.Tensor) -> bool:
    out = model(x)
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "FusedCBAM" in type(node).__name__:
            return True
        stack.extend(n for n, _ in node.next_functions)
    return False


def test_only_training_with_gradients_takes_the_fused_path():
    model = build_model("resnet18_cbam", in_channels=1)
    x = torch.randn(2, 1, 32, 32)
    assert _uses_fused_node(model.train(), x)
    assert not _uses_fused_node(model.eval(), x)          # evaluation and Captum see the modules
    set_fused_training(model, False)
    assert not _uses_fused_node(model.train(), x)


def test_a_training_step_is_the_same_either_way():
    torch.manual_seed(6)
    model = build_model("resnet18_cbam", in_channels=1).double().train()
    twin = copy.deepcopy(model)
    set_fused_training(twin, False)
    x, y = torch.randn(4, 1, 48, 48, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    for m in (model, twin):
        torch.nn.functional.cross_entropy(m(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


# ------------------------------------------------------------------ GEMM weight gradients

@pytest.mark.parametrize("kernel, stride, padding, size", [
    ((3, 3), (1, 1), (1, 1), 7), ((3, 3), (2, 2), (1, 1), 14), ((1, 1), (2, 2), (0, 0), 9),
    ((5, 3), (1, 2), (2, 1), 8)])
def test_gemm_weight_grad_matches_torch(kernel, stride, padding, size):
    torch.manual_seed(7)
    x = torch.randn(3, 6, size, size + 1, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, 6, *kernel, dtype=torch.float64)
    grad_out = torch.randn_like(torch.nn.functional.conv2d(x, w, stride=stride, padding=padding))
    expected = torch.nn.grad.conv2d_weight(x, w.shape, grad_out, stride=stride, padding=padding)
    torch.testing.assert_close(weight_grad_gemm(x, grad_out, kernel, stride, padding), expected)


def _conv_pair(size: int, stride: int = 1):
    torch.manual_seed(8)
    conv = Conv2d(8, 16, 3, stride=stride, padding=1, bias=False).double()
    plain = torch.nn.Conv2d(8, 16, 3, stride=stride, padding=1, bias=False).double()
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 8, size, size, dtype=torch.float64, requires_grad=True)
    return conv, plain, x


@pytest.mark.parametrize("stride", [1, 2])
def test_gemm_conv_trains_like_nn_conv2d(stride):
    conv, plain, x = _conv_pair(6, stride)
    assert conv._gemm_applies(x)
    grads = []
    for module in (conv, plain):
        x.grad = None
        out = module(x)
        out.backward(torch.ones_like(out))
        grads.append((out.detach(), x.grad.clone(), module.weight.grad.clone()))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


def test_gemm_conv_takes_over_only_small_maps_in_training():
    conv, _, x = _conv_pair(6)
    big = torch.randn(1, 8, 32, 32, dtype=torch.float64)
    assert conv._gemm_applies(x) and not conv._gemm_applies(big)        # 36 vs 1,024 positions
    assert not conv.eval()._gemm_applies(x)
    with torch.no_grad():
        assert not conv.train()._gemm_applies(x)


def test_gemm_conv_under_bfloat16_autocast_gives_float32_weight_grads():
    conv, plain, x = _conv_pair(7)
    conv, plain = conv.float(), plain.float()
    x = x.detach().float()
    for module in (conv, plain):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
    assert conv.weight.grad.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(conv.weight.grad.flatten(), plain.weight.grad.flatten(), dim=0)
    assert cos > 0.999


def test_inference_copies_see_plain_convolutions():
    model = build_model("resnet18_cbam", in_channels=1)
    assert any(type(m) is Conv2d for m in model.modules())
    plain = to_plain_conv2d(copy.deepcopy(model))
    assert not any(type(m) is Conv2d for m in plain.modules())
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), model.eval()(x))
