"""Built-in architectures, the ``Normalized`` wrapper, ``load_model`` and the training command."""

from .architectures import ARCHITECTURES, BasicBlock, LeNet, ShapesResNet, ShapesVGG
from .convolutional import fully_convolutional
from .loading import BUILTIN, PRETRAINED, list_models, load_model, read_state
from .normalized import Normalized
from .training import TrainingLoss, TrainResult, train

__all__ = ["ARCHITECTURES", "BUILTIN", "BasicBlock", "LeNet", "Normalized", "PRETRAINED", "ShapesResNet",
           "ShapesVGG", "fully_convolutional", "list_models", "load_model", "read_state", "train", "TrainingLoss",
           "TrainResult"]
