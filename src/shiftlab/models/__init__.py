"""The reference zoo: plain-torch models, built by name through the registry."""
from . import convnet, lenet  # noqa: F401  (register the models)
from .convnet import ConvNet
from .lenet import LeNetWolf
from .registry import create_model, list_models, model_doc, register_model

__all__ = ["ConvNet", "LeNetWolf", "create_model", "list_models", "model_doc", "register_model"]
