"""Validation of the ``inputs`` argument shared by every method."""

from __future__ import annotations

import torch
from torch import nn

from .device import model_device
from .errors import InputError


def check_inputs(model: nn.Module, inputs: torch.Tensor, name: str = "inputs") -> torch.Tensor:
    """``inputs`` as a float ``[N, C, H, W]`` tensor on the model's device, with clear errors.

    The channel count is checked against the model's first convolution (or its declared
    input size) so a grey image given to an RGB model fails here, not deep in ``forward``.
    """
    if not isinstance(inputs, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor [N, C, H, W], got {type(inputs).__name__}; "
                         "load images with underhood.load_image")
    if inputs.ndim == 3:
        raise InputError(f"{name}: expected [N, C, H, W], got {tuple(inputs.shape)}; add a batch axis "
                         "with inputs[None]")
    if inputs.ndim != 4 or inputs.shape[0] == 0:
        raise InputError(f"{name}: expected a non-empty [N, C, H, W] tensor, got shape {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise InputError(f"{name}: expected float pixels in [0, 1], got dtype {inputs.dtype}; "
                         "use inputs.float() / 255")
    expected = expected_channels(model)
    if expected is not None and inputs.shape[1] != expected:
        raise InputError(f"{name}: the model takes {expected}-channel images, got {inputs.shape[1]} channels; "
                         f"load them with load_image(path, channels={expected})")
    return inputs.detach().to(model_device(model), torch.float32)


def expected_channels(model: nn.Module) -> int | None:
    """Input channels the model expects: its declared input size, else its first Conv2d."""
    size = getattr(model, "input_size", None)
    if size:
        return int(size[0])
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def dataset_images(dataset: object) -> torch.Tensor:
    """The ``[N, C, H, W]`` images of an ImageSet (its ``images``) or of a tensor, checked non-empty."""
    images = getattr(dataset, "images", dataset)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
        raise InputError(f"dataset: expected an ImageSet or a non-empty [N, C, H, W] tensor, got "
                         f"{getattr(images, 'shape', type(dataset).__name__)}")
    return images
