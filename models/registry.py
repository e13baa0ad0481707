"""Architectures offered by the product, built by name.

Each entry names the layer Grad-CAM explains by default and the torchvision ImageNet weights file
that ``pretrained=True`` looks for on disk (torchvision's IMAGENET1K_V1 file names, written out:
importing torchvision costs about 1.5 s, mostly torch._dynamo, and only the architectures that
torchvision defines import it, when they are built).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import nn

from models.cbam import CBAM
from models.pretrained import load_imagenet_weights
from models.resnet import BasicBlock, Bottleneck, ResNet


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[int, int], nn.Module]  # (in_channels, num_classes) -> model
    gradcam_layer: str
    weights_file: str
    first_conv: str
    classifier: str
    description: str


def _resnet(block, layers, attn: bool, in_channels: int, num_classes: int) -> nn.Module:
    return ResNet(block, layers, in_channels=in_channels, num_classes=num_classes,
                  attn_layer=CBAM if attn else None)


def _swap_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if in_channels == conv.in_channels:
        return conv
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     bias=conv.bias is not None)


def _densenet121(in_channels: int, num_classes: int) -> nn.Module:
    import torchvision
    m = torchvision.models.densenet121(num_classes=num_classes)
    m.features.conv0 = _swap_conv(m.features.conv0, in_channels)
    return m


def _efficientnet_b0(in_channels: int, num_classes: int) -> nn.Module:
    import torchvision
    m = torchvision.models.efficientnet_b0(num_classes=num_classes)
    m.features[0][0] = _swap_conv(m.features[0][0], in_channels)
    return m


def _vgg16(in_channels: int, num_classes: int) -> nn.Module:
    import torchvision
    m = torchvision.models.vgg16(num_classes=num_classes)
    m.features[0] = _swap_conv(m.features[0], in_channels)
    return m


def _alexnet(in_channels: int, num_classes: int) -> nn.Module:
    import torchvision
    m = torchvision.models.alexnet(num_classes=num_classes)
    m.features[0] = _swap_conv(m.features[0], in_channels)
    return m


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture("resnet18_cbam", partial(_resnet, BasicBlock, [2, 2, 2, 2], True), "layer4",
                 "resnet18-f37072fd.pth", "conv1", "fc",
                 "ResNet18 with CBAM in every residual block (the product's model)"),
    Architecture("resnet18", partial(_resnet, BasicBlock, [2, 2, 2, 2], False), "layer4",
                 "resnet18-f37072fd.pth", "conv1", "fc",
                 "plain ResNet18 (baseline without attention)"),
    Architecture("resnet50_cbam", partial(_resnet, Bottleneck, [3, 4, 6, 3], True), "layer4",
                 "resnet50-0676ba61.pth", "conv1", "fc",
                 "ResNet50 with CBAM in every bottleneck block"),
    Architecture("densenet121", _densenet121, "features.denseblock4",
                 "densenet121-a639ec97.pth", "features.conv0", "classifier",
                 "DenseNet-121 (CheXNet's backbone)"),
    Architecture("efficientnet_b0", _efficientnet_b0, "features.8",
                 "efficientnet_b0_rwightman-7f5810bc.pth", "features.0.0", "classifier",
                 "EfficientNet-B0"),
    Architecture("vgg16", _vgg16, "features.29",
                 "vgg16-397923af.pth", "features.0", "classifier",
                 "VGG-16"),
    Architecture("alexnet", _alexnet, "features.11",
                 "alexnet-owt-7be5be79.pth", "features.0", "classifier",
                 "AlexNet"),
]}


class UnknownArchitecture(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; say it plainly
        return str(self.args[0])


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitecture(
            f"Unknown architecture '{name}'; choose one of: {', '.join(ARCHITECTURES)}") from None


def build_model(name: str, *, in_channels: int = 1, num_classes: int = 2,
                pretrained: bool = False) -> nn.Module:
    """Build an architecture by name; ``pretrained`` loads ImageNet weights from disk only."""
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    arch = get_architecture(name)
    model = arch.build(in_channels, num_classes)
    if pretrained:
        load_imagenet_weights(model, arch.weights_file, arch.first_conv, arch.classifier)
    return model
