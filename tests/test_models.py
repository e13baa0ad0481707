"""models/: the registry builds every architecture, CBAM gates, ImageNet weights load from disk only."""

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from models import ARCHITECTURES, CBAM, PretrainedWeightsNotFound, UnknownArchitecture, build_model
from models.cbam import ChannelAttention, SpatialAttention


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_gives_two_logits(name, in_channels):
    model = build_model(name, in_channels=in_channels).eval()
    size = 64 if name == "alexnet" else 32   # AlexNet's three max-pools need at least 64 px
    with torch.inference_mode():
        assert model(torch.randn(2, in_channels, size, size)).shape == (2, 2)


def test_in_channels_other_than_1_or_3_is_refused():
    with pytest.raises(ValueError, match="got 2"):
        build_model("resnet18", in_channels=2)


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(UnknownArchitecture) as err:
        build_model("resnet19")
    assert "resnet19" in str(err.value)
    assert all(name in str(err.value) for name in ARCHITECTURES)


@pytest.mark.parametrize("name, expected", [("resnet18", 0), ("resnet18_cbam", 8), ("resnet50_cbam", 16)])
def test_cbam_sits_in_every_residual_block(name, expected):
    assert sum(isinstance(m, CBAM) for m in build_model(name).modules()) == expected


# ------------------------------------------------------------------ CBAM

def test_cbam_keeps_the_shape_and_only_attenuates():
    torch.manual_seed(0)
    x = torch.rand(3, 32, 9, 7)          # nonnegative, as after a ReLU
    with torch.no_grad():
        y = CBAM(32)(x)
    assert y.shape == x.shape
    # Both gates are sigmoids in (0, 1): the output is a strictly smaller nonnegative copy.
    assert bool((y >= 0).all()) and bool((y < x).all())


def test_channel_gate_is_one_factor_per_channel():
    torch.manual_seed(0)
    x = torch.rand(2, 16, 5, 6) + 0.1
    with torch.no_grad():
        ratio = ChannelAttention(16)(x) / x
    torch.testing.assert_close(ratio, ratio[:, :, :1, :1].expand_as(ratio))
    assert bool((ratio > 0).all()) and bool((ratio < 1).all())


def test_spatial_gate_is_one_factor_per_position():
    torch.manual_seed(0)
    x = torch.rand(2, 16, 5, 6) + 0.1
    with torch.no_grad():
        ratio = SpatialAttention()(x) / x
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    assert bool((ratio > 0).all()) and bool((ratio < 1).all())


# ------------------------------------------------------------------ ImageNet weights from disk

@pytest.mark.parametrize("name", ["resnet18", "resnet18_cbam"])
def test_backbone_parameter_names_match_torchvision(name):
    ours = build_model(name, in_channels=3, num_classes=1000).state_dict()
    theirs = torchvision.models.resnet18().state_dict()
    assert set(theirs) <= set(ours)
    assert all(ours[k].shape == v.shape for k, v in theirs.items())
    assert {k for k in ours if k not in theirs} == {k for k in ours if ".attn." in k}


@pytest.fixture
def imagenet_dir(tmp_path, monkeypatch):
    """An empty CXR_PRETRAINED_DIR, and a torch hub folder that holds nothing either."""
    folder = tmp_path / "imagenet"
    folder.mkdir()
    monkeypatch.setenv("CXR_PRETRAINED_DIR", str(folder))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return folder


@pytest.mark.parametrize("name, fmt", [("resnet18_cbam", "pth"), ("resnet18", "safetensors")])
def test_pretrained_resnet18_loads_the_file_on_disk(imagenet_dir, name, fmt):
    torch.manual_seed(1)
    # Random values everywhere (BN statistics included), so no tensor matches a fresh build by chance.
    reference = {k: torch.randn_like(v) if v.is_floating_point() else v
                 for k, v in torchvision.models.resnet18().state_dict().items()}
    filename = ARCHITECTURES[name].weights_file
    if fmt == "pth":
        torch.save(reference, imagenet_dir / filename)
    else:
        save_file(reference, str((imagenet_dir / filename).with_suffix(".safetensors")))

    gray = build_model(name, in_channels=1, pretrained=True).state_dict()
    rgb = build_model(name, in_channels=3, pretrained=True).state_dict()
    for key in ("layer3.1.conv2.weight", "layer4.0.downsample.1.running_var", "bn1.bias"):
        torch.testing.assert_close(gray[key], reference[key], rtol=0, atol=0)
    torch.testing.assert_close(rgb["conv1.weight"], reference["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(gray["conv1.weight"], reference["conv1.weight"].sum(1, keepdim=True))
    assert gray["fc.weight"].shape == (2, 512)   # the classifier keeps its own 2-class head


def test_pretrained_without_a_file_names_the_folder(imagenet_dir):
    with pytest.raises(PretrainedWeightsNotFound) as err:
        build_model("resnet18_cbam", pretrained=True)
    assert str(imagenet_dir / ARCHITECTURES["resnet18_cbam"].weights_file) in str(err.value)


def test_weights_file_names_are_torchvisions():
    """The registry writes torchvision's ImageNet file names out (so building a ResNet does not import
    torchvision); they must stay the names torchvision's IMAGENET1K_V1 weights download as."""
    w = torchvision.models
    expected = {"resnet18_cbam": w.ResNet18_Weights, "resnet18": w.ResNet18_Weights, "resnet50_cbam": w.ResNet50_Weights,
                "densenet121": w.DenseNet121_Weights, "efficientnet_b0": w.EfficientNet_B0_Weights,
                "vgg16": w.VGG16_Weights, "alexnet": w.AlexNet_Weights}
    assert {n: a.weights_file for n, a in ARCHITECTURES.items()} == {
        n: e.IMAGENET1K_V1.url.rsplit("/", 1)[-1] for n, e in expected.items()}
