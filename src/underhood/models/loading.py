"""``load_model(spec)``: built-in names, weight files, TorchScript, factories and model zoos.

Every model comes back in eval mode, on the chosen device, taking ``[0, 1]`` pixels (a
:class:`Normalized` wrapper holds the normalisation) and carrying ``classes``.
"""

from __future__ import annotations

import importlib
import json
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..core.device import resolve_device
from ..core.errors import ModelError
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
    return _build(meta, tensors, path)


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
        raise ModelError(f"spec: weights in {source} do not fit architecture {arch!r} "
                         f"({str(exc).splitlines()[0]})") from exc
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


def _from_file(path: Path, trust: bool) -> nn.Module:
    if not path.is_file():
        raise ModelError(f"spec: no built-in model and no file named {str(path)!r}; "
                         f"built-ins are {', '.join(BUILTIN)}")
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
        if not trust and "weights_only" in str(exc):
            raise ModelError(f"spec: {str(path)!r} holds pickled Python objects, which can run arbitrary "
                             "code when loaded; save a state_dict with an 'arch' key or TorchScript instead, "
                             "or pass trust=True (CLI: --trust) if you trust the file") from exc
        raise ModelError(f"spec: cannot load {str(path)!r} as a PyTorch checkpoint ({str(exc).splitlines()[0]})") \
            from exc
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
               trust: bool = False) -> nn.Module:
    """Load a model that takes ``[0, 1]`` pixels, in eval mode, carrying ``classes``.

    Args:
        spec: a built-in name (``"shapes"``, ``"shapes-resnet"``, ``"digits"``); a file
            (``.safetensors`` written by ``underhood train``, TorchScript, or a checkpoint
            ``{"arch": <built-in>, "state_dict": ...}``); ``"package.module:factory"``;
            ``"torchvision:NAME"`` / ``"timm:NAME"`` when those packages are installed; or an
            ``nn.Module`` (wrapped with identity normalisation).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``.
        trust: allow unpickling arbitrary Python objects from a checkpoint (only for files you trust).

    Example:
        >>> model = load_model("shapes")                    # doctest: +SKIP
        >>> model.classes[:3]                               # doctest: +SKIP
        ['circle', 'square', 'triangle']
    """
    dev = resolve_device(device)
    if isinstance(spec, nn.Module):
        return _finish(_wrap(spec, type(spec).__name__), dev)
    # building a network initialises its weights from the global generator: the caller's state is restored
    with torch.random.fork_rng(devices=[]):
        return _finish(_load(spec, trust), dev)


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
