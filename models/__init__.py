"""Network definitions: CBAM, ResNet(+CBAM) and a registry of the architectures offered."""

from models.cbam import CBAM
from models.pretrained import PretrainedWeightsNotFound
from models.registry import ARCHITECTURES, Architecture, UnknownArchitecture, build_model, get_architecture

__all__ = ["CBAM", "ARCHITECTURES", "Architecture", "PretrainedWeightsNotFound",
           "UnknownArchitecture", "build_model", "get_architecture"]
