"""Built-in architectures, the ``Normalized`` wrapper, ``load_model`` and the training command."""

from .architectures import ARCHITECTURES, BasicBlock, LeNet, ShapesResNet, ShapesVGG
from .loading import BUILTIN, list_models, load_model
from .normalized import Normalized
from .training import TrainingLoss, TrainResult, train

__all__ = ["ARCHITECTURES", "BUILTIN", "BasicBlock", "LeNet", "Normalized", "ShapesResNet", "ShapesVGG",
           "list_models", "load_model", "train", "TrainingLoss", "TrainResult"]
