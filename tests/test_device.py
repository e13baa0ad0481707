"""engine.model.device: the precision policy follows the CPU's abilities and $CXR_PRECISION."""

import pytest
import torch

from engine.model.device import cpu_supports_bf16, plain_policy, select_policy

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="these check the CPU policies")


def test_auto_uses_bfloat16_exactly_when_the_cpu_has_it(monkeypatch):
    monkeypatch.delenv("CXR_PRECISION", raising=False)
    policy = select_policy()
    assert policy.device.type == "cpu" and policy.channels_last
    assert policy.autocast_dtype == (torch.bfloat16 if cpu_supports_bf16() else None)


def test_cxr_precision_float32_forces_the_plain_policy(monkeypatch):
    monkeypatch.setenv("CXR_PRECISION", "float32")
    assert select_policy() == plain_policy()
    monkeypatch.delenv("CXR_PRECISION")
    assert select_policy("float32") == plain_policy()


def test_plain_policy_is_float32_and_contiguous():
    policy = plain_policy()
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 3, 5, 5)
    assert policy.autocast_dtype is None and not policy.channels_last
    assert policy.to_device(x).is_contiguous()
    with policy.autocast():
        assert layer(torch.randn(2, 8)).dtype == torch.float32
    assert policy.label == "cpu, float32"


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bfloat16")
def test_selected_policy_really_runs_in_bfloat16_channels_last(monkeypatch):
    monkeypatch.delenv("CXR_PRECISION", raising=False)
    policy = select_policy()
    with policy.autocast():
        assert torch.nn.Linear(8, 4)(torch.randn(2, 8)).dtype == torch.bfloat16
    assert policy.to_device(torch.randn(2, 3, 5, 5)).is_contiguous(memory_format=torch.channels_last)
    conv = policy.prepare_model(torch.nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
