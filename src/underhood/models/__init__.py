"""Built-in architectures, the ``Normalized`` wrapper, ``load_model`` and the training command."""

from .architectures import ARCHITECTURES, BasicBlock, LeNet, ShapesResNet, ShapesVGG
from .loading import BUILTIN, list_models, load_model
from .normalized import Normalized

__all__ = ["ARCHITECTURES", "BUILTIN", "BasicBlock", "LeNet", "Normalized", "ShapesResNet", "ShapesVGG",
           "list_models", "load_model"]
