"""The reference zoo: plain-torch models, built by name through the registry.

Every zoo model has a ``geometry`` (total stride and receptive field, computed from its
layers' settings); the probes measure the stride independently and a test compares them.
"""
from . import convnet, lenet, p4, resnet, sliding  # noqa: F401  (register the models)
from . import fixed  # noqa: F401  (the converted zoo: BlurPool / APS variants)
from . import audio  # noqa: F401  (spectrogram CNNs)
from . import resnet_imagenet  # noqa: F401  (torchvision-layout ResNet-18/50 and their fixes)
from .convnet import ConvNet
from .geometry import Geometry, chain_geometry
from .lenet import LeNetWolf
from .p4 import P4CNN, P4GroupConv, P4Lifting, P4Pool
from .registry import (builder_accepts, create_model, example_shape, list_models, model_doc,
                       register_model)
from .resnet import ResNetSmall
from .resnet_imagenet import ResNet

__all__ = ["ConvNet", "LeNetWolf", "ResNetSmall", "ResNet", "P4CNN", "P4Lifting", "P4GroupConv", "P4Pool",
           "Geometry", "chain_geometry",
           "create_model", "list_models", "model_doc", "register_model", "builder_accepts",
           "example_shape"]
