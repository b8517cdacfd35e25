"""``load_model(spec)``: built-in names, weight files, TorchScript, factories and model zoos.

Every model comes back in eval mode, on the chosen device, taking ``[0, 1]`` pixels (a
:class:`Normalized` wrapper holds the normalisation) and carrying ``classes``.
"""

from __future__ import annotations

import importlib
import json
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.device import resolve_device
from ..core.errors import InputError, ModelError
from ..core.outputs import Output, check_output
from .architectures import ARCHITECTURES
from .normalized import Normalized

WEIGHTS_DIR = Path(__file__).parent / "weights"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BUILTIN = {
    "shapes": "VGG-style CNN on the procedural shapes (default)",
    "shapes-resnet": "small ResNet (BatchNorm, skip connections) on the procedural shapes",
    "digits": "LeNet-5 on scikit-learn's handwritten digits (32x32 grey)",
    "shapes-spurious": "shapes CNN trained with a class-coloured corner marker, which it relies on (Clever Hans)",
    "shapes-random-labels": "shapes CNN that memorised permuted labels (data-randomisation sanity check)",
    "shapes-robust": "shapes CNN adversarially trained (fast FGSM, L-inf 8/255): robust to PGD at 8/255",
}


def list_models() -> list[str]:
    """Names of the built-in models whose weights ship with the package."""
    return [name for name in BUILTIN if (WEIGHTS_DIR / f"{name}.safetensors").is_file()]


def _finish(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device)
    model.eval()
    return model


def _from_safetensors(path: Path) -> Normalized:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("underhood", "{}"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as exc:
        raise ModelError(f"spec: cannot read {str(path)!r} as underhood safetensors weights ({exc})") from exc
    if not meta.get("arch"):
        keys = ", ".join(list(tensors)[:3]) + (", ..." if len(tensors) > 3 else "")
        raise ModelError(f"spec: {str(path)!r} holds {len(tensors)} tensors ({keys}) but no underhood metadata naming "
                         "their architecture (files written by `underhood train` have it); build the network, load "
                         "them with net.load_state_dict(safetensors.torch.load_file(path)) and pass load_model(net), "
                         "or give 'package.module:factory'")
    return _build(meta, tensors, repr(str(path)))


def _mismatch(net: nn.Module, state: dict) -> str:
    """What differs between a state dict and a network's: missing, unexpected and mis-shaped keys."""
    own = net.state_dict()
    parts = []
    for label, keys in (("missing", [k for k in own if k not in state]),
                        ("unexpected", [k for k in state if k not in own]),
                        ("of another shape", [k for k in own if k in state and tuple(own[k].shape)
                                              != tuple(getattr(state[k], "shape", ()))])):
        if keys:
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    return "; ".join(parts) or "the tensors do not load"


def _build(meta: dict, state: dict, source: object) -> Normalized:
    arch = meta.get("arch")
    if arch not in ARCHITECTURES:
        raise ModelError(f"spec: {source} names architecture {arch!r}, which is not built in; "
                         f"built-ins are {', '.join(ARCHITECTURES)} (or load it with 'package.module:factory')")
    classes = meta.get("classes") or [str(i) for i in range(10)]
    input_size = meta.get("input_size") or None
    channels = int(input_size[0]) if input_size else 3
    net = ARCHITECTURES[arch](num_classes=len(classes), in_channels=channels)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"spec: the weights in {source} do not fit architecture {arch!r}: {_mismatch(net, state)}; "
                         "save them from that architecture, or load your own network with load_model(net) or "
                         "'package.module:factory'") from exc
    mean = meta.get("mean") or [0.0] * channels
    std = meta.get("std") or [1.0] * channels
    info = {k: v for k, v in meta.items() if k not in ("classes", "input_size", "mean", "std")}
    return Normalized(net, mean, std, classes, input_size, info)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _wrap(module: nn.Module, source: str) -> nn.Module:
    """Give a user's module the conventions: pixels in [0, 1] (identity normalisation) and classes."""
    if isinstance(module, Normalized):
        return module
    classes = getattr(module, "classes", None)
    if classes is None:
        out = None
        for m in reversed(list(module.modules())):
            out = getattr(m, "out_features", None)
            if out is not None:
                break
        classes = [str(i) for i in range(out or 0)]
    channels = None
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            channels = m.in_channels
            break
    mean = getattr(module, "mean", None)
    std = getattr(module, "std", None)
    c = channels or 3
    return Normalized(module, mean if isinstance(mean, (list, tuple)) else [0.0] * c,
                      std if isinstance(std, (list, tuple)) else [1.0] * c, classes,
                      getattr(module, "input_size", None), {"source": source})


IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


def _is_image(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(12)
    return head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _from_file(path: Path, trust: bool) -> nn.Module:
    if not path.is_file():
        raise ModelError(f"spec: no built-in model and no file named {str(path)!r}; "
                         f"built-ins are {', '.join(BUILTIN)}")
    if _is_image(path):
        raise ModelError(f"spec: {str(path)!r} is an image, not a model weights file; give the model as a built-in "
                         f"name ({', '.join(BUILTIN)}), a weights file or 'package.module:factory', and the image "
                         "as the input (underhood.load_image)")
    if path.suffix == ".safetensors":
        return _from_safetensors(path)
    if _is_torchscript(path):
        try:
            return _wrap(torch.jit.load(str(path), map_location="cpu"), str(path))
        except RuntimeError as exc:
            raise ModelError(f"spec: {str(path)!r} looks like TorchScript but does not load ({exc})") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not trust)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... here
        if not trust and "Unsupported global" in str(exc):
            raise ModelError(f"spec: {str(path)!r} holds pickled Python objects, which can run arbitrary "
                             "code when loaded; save a state_dict with an 'arch' key or TorchScript instead, "
                             "or pass trust=True (CLI: --trust) if you trust the file") from exc
        why = "" if "weights_only" in str(exc) else f" ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
        raise ModelError(f"spec: cannot load {str(path)!r}: it is not a PyTorch checkpoint, TorchScript or "
                         f".safetensors file{why}") from exc
    if isinstance(obj, nn.Module):
        return _wrap(obj, str(path))
    if isinstance(obj, dict) and "arch" in obj:
        state = obj.get("state_dict") or obj.get("model") or {}
        meta = {k: v for k, v in obj.items() if k not in ("state_dict", "model")}
        return _build(meta, state, repr(str(path)))
    raise ModelError(f"spec: {str(path)!r} is a checkpoint without an 'arch' key naming a built-in "
                     f"architecture ({', '.join(ARCHITECTURES)}); save {{'arch': ..., 'state_dict': ...}} "
                     "or load the model with 'package.module:factory'")


def _from_factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"spec: cannot import {module_name!r} for {spec!r} ({exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"spec: {module_name!r} has no callable {attr!r}; give 'package.module:factory'")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelError(f"spec: {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return _wrap(model, spec)


def _from_torchvision(name: str) -> nn.Module:
    try:
        tv_models = importlib.import_module("torchvision.models")
    except Exception as exc:  # ImportError, or a RuntimeError when its build does not match torch
        raise ModelError(f"spec: 'torchvision:{name}' needs torchvision, which does not import here ({exc}); "
                         "install a torchvision built for this torch") from exc
    try:
        weights = tv_models.get_model_weights(name).DEFAULT
        net = tv_models.get_model(name, weights=weights)
    except (ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"spec: torchvision has no model {name!r} ({exc})") from exc
    classes = list(weights.meta.get("categories") or [])
    return Normalized(net, IMAGENET_MEAN, IMAGENET_STD, classes, (3, 224, 224), {"source": f"torchvision:{name}"})


def _from_timm(name: str) -> nn.Module:
    try:
        timm = importlib.import_module("timm")
    except Exception as exc:
        raise ModelError(f"spec: 'timm:{name}' needs timm, which does not import here ({exc})") from exc
    try:
        net = timm.create_model(name, pretrained=True)
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"spec: timm cannot create {name!r} ({exc})") from exc
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    classes = []
    try:
        info = importlib.import_module("timm.data").ImageNetInfo()
        classes = [info.index_to_description(i) for i in range(net.num_classes)]
    except Exception:  # older timm: no class-name table; fall back to indices
        classes = [str(i) for i in range(getattr(net, "num_classes", 0))]
    return Normalized(net, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD), classes,
                      tuple(cfg.get("input_size", (3, 224, 224))), {"source": f"timm:{name}"})


def load_model(spec: str | nn.Module = "shapes", *, device: str | torch.device = "auto",
               trust: bool = False, output: Output = None, classes: Sequence[str] | None = None,
               input_size: Sequence[int] | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> nn.Module:
    """Load a model that takes ``[0, 1]`` pixels, in eval mode, carrying ``classes``.

    Args:
        spec: a built-in name (``"shapes"``, ``"shapes-resnet"``, ``"digits"``); a file
            (``.safetensors`` written by ``underhood train``, TorchScript, or a checkpoint
            ``{"arch": <built-in>, "state_dict": ...}``); ``"package.module:factory"``;
            ``"torchvision:NAME"`` / ``"timm:NAME"`` when those packages are installed; or an
            ``nn.Module`` (wrapped with identity normalisation).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``.
        trust: allow unpickling arbitrary Python objects from a checkpoint (only for files you trust).
        output: which tensor of the model's output is the logits, for a ``forward`` that returns a
            tuple, list, dict or an object with ``.logits``: ``None`` (default: the ``"logits"`` key,
            else the ``.logits`` attribute, else the first tensor), an int index (``output=1``), a str
            key or attribute name (``output="aux"``) or a callable ``output -> Tensor``. The model
            returned gives that tensor (see :mod:`underhood.core.outputs`).
        classes: class names, one per logit (default: the model's own ``classes``, else ``"0"``, ``"1"``, ...).
        input_size: ``(C, H, W)`` the network was trained on (default: the model's ``input_size``, else
            any size).
        mean, std: the per-channel normalisation the network expects on ``[0, 1]`` pixels (e.g. ImageNet's
            ``(0.485, 0.456, 0.406)`` / ``(0.229, 0.224, 0.225)``); it becomes part of the model, so every
            method still takes ``[0, 1]`` pixels. Given for a module or file that already carries one,
            these replace it.

    Example:
        >>> model = load_model("shapes")                    # doctest: +SKIP
        >>> model.classes[:3]                               # doctest: +SKIP
        ['circle', 'square', 'triangle']
    """
    dev = resolve_device(device)
    output = check_output(output)
    given = _conventions(classes, input_size, mean, std)
    if isinstance(spec, nn.Module):
        return _finish(_with_output(_wrap(spec, type(spec).__name__), output, given), dev)
    # building a network initialises its weights from the global generator: the caller's state is restored
    with torch.random.fork_rng(devices=[]):
        return _finish(_with_output(_load(spec, trust), output, given), dev)


def _conventions(classes: object, input_size: object, mean: object, std: object) -> dict[str, Any]:
    """The conventions a caller gives :func:`load_model`, checked (only those given)."""
    given: dict[str, Any] = {}
    if classes is not None:
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes) or not len(classes):
            raise InputError(f"classes: expected a non-empty list of class names (str), got {classes!r}")
        given["classes"] = list(classes)
    if input_size is not None:
        size = tuple(input_size) if isinstance(input_size, (list, tuple)) else ()
        if len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
            raise InputError(f"input_size: expected (C, H, W) as three positive ints, got {input_size!r}")
        given["input_size"] = size
    for name, value in (("mean", mean), ("std", std)):
        if value is None:
            continue
        values = [float(v) for v in value] if isinstance(value, (list, tuple)) else []
        if not values or not all(math.isfinite(v) for v in values) or (name == "std" and min(values) <= 0):
            raise InputError(f"{name}: expected one {'positive ' if name == 'std' else ''}number per channel, "
                             f"e.g. (0.485, 0.456, 0.406), got {value!r}")
        given[name] = values
    return given


def _with_output(model: nn.Module, output: Output, given: dict[str, Any] | None = None) -> nn.Module:
    """``model`` reading ``output`` as its logits, with the conventions in ``given`` (classes, input_size,
    mean, std) replacing its own: a new wrapper sharing the network (the caller's is kept)."""
    given = given or {}
    if output is None and not given:
        return model
    if not isinstance(model, Normalized):  # TorchScript wrapped by _wrap is a Normalized too; this is a safeguard
        model = _wrap(model, type(model).__name__)
    mean = given.get("mean", model.mean.flatten().tolist())
    std = given.get("std", model.std.flatten().tolist())
    if len(mean) != len(std):
        raise InputError(f"mean, std: expected one value per channel in both, got {len(mean)} and {len(std)}")
    size = given.get("input_size", model.input_size)
    if size is not None and size[0] != len(mean) and len(mean) > 1:
        raise InputError(f"mean: the model takes {size[0]} channels, got {len(mean)} values")
    return Normalized(model.net, mean, std, given.get("classes", model.classes), size, model.meta,
                      output if output is not None else getattr(model, "output", None))


def _load(spec: object, trust: bool) -> nn.Module:
    """The model named by a spec (see :func:`load_model`), on the CPU."""
    if not isinstance(spec, str) or not spec:
        raise ModelError(f"spec: expected a model name, path or 'package.module:factory', got {spec!r}")
    if spec in BUILTIN:
        path = WEIGHTS_DIR / f"{spec}.safetensors"
        if not path.is_file():
            raise ModelError(f"spec: the weights of built-in {spec!r} are missing from the installation "
                             f"({path}); reinstall underhood or retrain with `underhood train --arch {spec}`")
        model = _from_safetensors(path)
        model.meta["source"] = spec
        return model
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "torchvision":
        return _from_torchvision(rest)
    if sep and prefix == "timm":
        return _from_timm(rest)
    if sep and not Path(spec).exists() and len(prefix) > 1:
        return _from_factory(spec)
    return _from_file(Path(spec), trust)
