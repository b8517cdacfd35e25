"""``load_model(spec)``: built-in names, weight files, TorchScript, factories and model zoos.

Every model comes back in eval mode, on the chosen device, taking ``[0, 1]`` pixels (a
:class:`Normalized` wrapper holds the normalisation) and carrying ``classes``.
"""

from __future__ import annotations

import importlib
import json
import math
import os
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

PRETRAINED = "pretrained"
"""``load_model``'s default ``weights``: the spec's own weights (a zoo's pretrained ones, a built-in's shipped ones)."""

Weights = str | os.PathLike | None
"""``weights=``: :data:`PRETRAINED`, a path to a state dict, or ``None`` (an untrained architecture)."""

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


def _from_safetensors(path: Path, weights: Weights = PRETRAINED, trust: bool = False) -> Normalized:
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
                         "their architecture (files written by `underhood train` have it); pass it as weights= to "
                         "the spec of its architecture (load_model('torchvision:NAME', weights=PATH), CLI: --weights), "
                         "or load it into your network and pass load_model(net)")
    if weights == PRETRAINED:
        return _build(meta, tensors, repr(str(path)))
    return _build(_conventions_of(meta), None if weights is None else read_state(weights, trust),
                  repr(str(weights)), "weights")


def _conventions_of(meta: dict) -> dict:
    """What of a file's metadata still holds for other weights: the architecture and its conventions, not the
    accuracy or the training run of the weights it came with."""
    return {k: v for k, v in meta.items() if k in ("arch", "classes", "input_size", "mean", "std", "dataset")}


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


STATE_KEYS = ("state_dict", "model", "model_state_dict")
"""Keys under which a checkpoint dict may hold the state dict (``{"state_dict": ..., "epoch": ...}``)."""

PREFIXES = ("module.", "_orig_mod.", "net.")
"""Key prefixes dropped when every key has one and the network's own keys do not: ``nn.DataParallel`` /
DDP (``module.``), ``torch.compile`` (``_orig_mod.``) and an underhood model's own ``state_dict()``
(``net.``, beside its ``mean`` and ``std`` buffers)."""


def read_state(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in the file ``path``, on the CPU: ``.safetensors``, or what ``torch.save`` wrote (read with
    ``weights_only=True`` unless ``trust``): a state dict, a checkpoint dict holding one under a
    :data:`STATE_KEYS` key, or (with ``trust``) a pickled module. One-line :class:`ModelError` otherwise."""
    file = Path(path)
    name = repr(str(path))
    if not file.is_file():
        raise ModelError(f"weights: no file named {name}; give a state dict saved with torch.save(net.state_dict(), "
                         "PATH) or a .safetensors file, or weights=None (CLI: --weights none) for an untrained model")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"weights: cannot read {name} as safetensors ({exc})") from exc
    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=not trust)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ... : torch.load has no common base
        if not trust and "Unsupported global" in str(exc):
            raise ModelError(f"weights: {name} holds pickled Python objects, which can run arbitrary code when "
                             "loaded; save net.state_dict() (or .safetensors) instead, or pass trust=True "
                             "(CLI: --trust) if you trust the file") from exc
        raise ModelError(f"weights: cannot load {name} as a state dict ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:80] if str(exc) else ''})") from exc
    for _ in range(2):  # a checkpoint {"state_dict": {...}, ...}, or a pickled module (trust=True)
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in STATE_KEYS if isinstance(obj.get(k), (dict, nn.Module))), None)
            obj = obj if inner is None else inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = ", ".join(map(str, list(obj)[:4])) if isinstance(obj, dict) else type(obj).__name__
        raise ModelError(f"weights: {name} is not a state dict of tensors (it holds {keys}); save "
                         "net.state_dict(), or a dict with it under 'state_dict' or 'model'")
    return dict(obj)


def load_state(net: nn.Module, state: dict[str, torch.Tensor], source: object, what: str,
               argument: str = "weights") -> None:
    """Load ``state`` into ``net`` (strict), dropping a :data:`PREFIXES` prefix that every key has and the
    network's keys do not; a mismatch is one line naming the missing, unexpected and mis-shaped keys."""
    own = net.state_dict()
    for prefix in PREFIXES:
        extra = ("mean", "std") if prefix == "net." else ()
        if state and all(k.startswith(prefix) or k in extra for k in state) \
                and not any(k.startswith(prefix) for k in own):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{argument}: the weights in {source} do not fit {what}: {_mismatch(net, state)}; "
                         "save them from that architecture (torch.save(net.state_dict(), PATH)), or load your "
                         "own network with load_model(net) or 'package.module:factory'") from exc


def _build(meta: dict, state: dict | None, source: object, argument: str = "spec") -> Normalized:
    arch = meta.get("arch")
    if arch not in ARCHITECTURES:
        raise ModelError(f"spec: {source} names architecture {arch!r}, which is not built in; "
                         f"built-ins are {', '.join(ARCHITECTURES)} (or load it with 'package.module:factory')")
    classes = meta.get("classes") or [str(i) for i in range(10)]
    input_size = meta.get("input_size") or None
    channels = int(input_size[0]) if input_size else 3
    net = ARCHITECTURES[arch](num_classes=len(classes), in_channels=channels)
    if state is not None:  # None: the architecture untrained (weights=None)
        load_state(net, state, source, f"architecture {arch!r}", argument)
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


def _from_file(path: Path, trust: bool, weights: Weights = PRETRAINED) -> nn.Module:
    if not path.is_file():
        raise ModelError(f"spec: no built-in model and no file named {str(path)!r}; "
                         f"built-ins are {', '.join(BUILTIN)}")
    if _is_image(path):
        raise ModelError(f"spec: {str(path)!r} is an image, not a model weights file; give the model as a built-in "
                         f"name ({', '.join(BUILTIN)}), a weights file or 'package.module:factory', and the image "
                         "as the input (underhood.load_image)")
    if path.suffix == ".safetensors":
        return _from_safetensors(path, weights, trust)
    if _is_torchscript(path):
        try:
            return _with_weights(_wrap(torch.jit.load(str(path), map_location="cpu"), str(path)), weights, trust,
                                 str(path))
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
        return _with_weights(_wrap(obj, str(path)), weights, trust, str(path))
    if isinstance(obj, dict) and "arch" in obj:
        state = obj.get("state_dict") or obj.get("model") or {}
        meta = {k: v for k, v in obj.items() if k not in ("state_dict", "model")}
        if weights == PRETRAINED:
            return _build(meta, state, repr(str(path)))
        return _build(_conventions_of(meta), None if weights is None else read_state(weights, trust),
                      repr(str(weights)), "weights")
    raise ModelError(f"spec: {str(path)!r} is a checkpoint without an 'arch' key naming a built-in "
                     f"architecture ({', '.join(ARCHITECTURES)}); save {{'arch': ..., 'state_dict': ...}} "
                     "or load the model with 'package.module:factory'")


def _from_factory(spec: str, weights: Weights = PRETRAINED, trust: bool = False) -> nn.Module:
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
    return _with_weights(_wrap(model, spec), weights, trust, spec)


def _with_weights(model: Normalized, weights: Weights, trust: bool, spec: str) -> Normalized:
    """A network that comes whole (factory, TorchScript, pickled module) with the state dict ``weights`` loaded
    into it; ``None`` is refused: underhood cannot tell how such a network is initialised."""
    if weights == PRETRAINED:
        return model
    if weights is None:
        raise ModelError(f"weights: None (an untrained architecture) works for built-in names and files, "
                         f"'torchvision:NAME' and 'timm:NAME'; {spec!r} builds its own network, so have it build "
                         "one untrained, or pass weights=PATH to a state dict")
    load_state(model.net, read_state(weights, trust), repr(str(weights)), repr(spec))
    return model


def _offline(library: str, name: str) -> ModelError:
    return ModelError(f"spec: {library} could not fetch the pretrained weights for {name} (offline?); pass "
                      "weights=PATH to a local state dict (CLI: --weights PATH) or weights=None for an untrained model")


def _download_error(exc: BaseException) -> bool:
    """Whether ``exc`` is how a zoo fails to fetch weights: urllib/requests/socket errors (``OSError``), torch.hub's
    ``RuntimeError`` (hash, incomplete file), or an error of huggingface_hub, requests, urllib3 or httpx."""
    root = type(exc).__module__.split(".")[0]
    return isinstance(exc, (OSError, RuntimeError)) or root in ("huggingface_hub", "requests", "urllib3", "httpx")


def _indices(net: nn.Module) -> list[str]:
    """``"0"``, ``"1"``, ... one per output of the network's last layer with ``out_features``."""
    for m in reversed(list(net.modules())):
        out = getattr(m, "out_features", None)
        if isinstance(out, int):
            return [str(i) for i in range(out)]
    return []


def _from_torchvision(name: str, weights: Weights = PRETRAINED, trust: bool = False) -> nn.Module:
    try:
        tv_models = importlib.import_module("torchvision.models")
    except Exception as exc:  # ImportError, or a RuntimeError when its build does not match torch
        raise ModelError(f"spec: 'torchvision:{name}' needs torchvision, which does not import here ({exc}); "
                         "install a torchvision built for this torch") from exc
    try:  # the weights enum is a table in the package: class names and preprocessing, with no download
        default = tv_models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError) as exc:
        default, why = None, exc
    try:
        if weights == PRETRAINED and default is None:
            raise ModelError(f"spec: torchvision has no model {name!r} with pretrained weights ({why}); pass "
                             "weights=PATH (CLI: --weights PATH) or weights=None for an untrained model")
        net = tv_models.get_model(name, weights=default if weights == PRETRAINED else None)
    except (ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"spec: torchvision has no model {name!r} ({exc})") from exc
    except ModelError:
        raise
    except Exception as exc:
        if weights == PRETRAINED and _download_error(exc):
            raise _offline("torchvision", name) from exc
        raise
    if weights is not None and weights != PRETRAINED:
        load_state(net, read_state(weights, trust), repr(str(weights)), f"torchvision's {name}")
    meta = dict(getattr(default, "meta", None) or {})
    preset = getattr(getattr(default, "transforms", None), "keywords", None) or {}  # partial(ImageClassification)
    classes = list(meta.get("categories") or []) or _indices(net)
    crop = preset.get("crop_size", 224)
    return Normalized(net, preset.get("mean", IMAGENET_MEAN), preset.get("std", IMAGENET_STD), classes,
                      (3, crop, crop), {"source": f"torchvision:{name}"})


def _weights_name(weights: Weights) -> str:
    return "none" if weights is None else str(weights)


def _timm_classes(net: nn.Module) -> list[str]:
    """ImageNet class names from timm's own table (no download) when the head has 1k (or a known subset's)
    classes, else indices."""
    n = int(getattr(net, "num_classes", 0) or len(_indices(net)))
    try:
        data = importlib.import_module("timm.data")
        infer = getattr(data, "infer_imagenet_subset", None)
        subset = infer(net) if infer is not None else ("imagenet-1k" if n == 1000 else None)
        if subset:
            info = data.ImageNetInfo(subset)
            return [info.index_to_description(i) for i in range(n)]
    except Exception:  # an older timm without ImageNetInfo, or a head that matches no table: indices
        pass
    return [str(i) for i in range(n)]


def _from_timm(name: str, weights: Weights = PRETRAINED, trust: bool = False) -> nn.Module:
    try:
        timm = importlib.import_module("timm")
    except Exception as exc:
        raise ModelError(f"spec: 'timm:{name}' needs timm, which does not import here ({exc})") from exc
    is_model = getattr(timm, "is_model", None)
    if is_model is not None and not is_model(name):
        raise ModelError(f"spec: timm has no model {name!r} (timm.list_models('*{name[:4]}*') lists close names)")
    try:
        net = timm.create_model(name, pretrained=weights == PRETRAINED)
    except Exception as exc:
        text = str(exc)
        if weights == PRETRAINED and "No pretrained weights" in text:
            raise ModelError(f"spec: timm has no pretrained weights for {name}; pass weights=PATH to a local state "
                             "dict (CLI: --weights PATH) or weights=None for an untrained model") from exc
        if weights == PRETRAINED and "Unknown model" not in text and _download_error(exc):
            raise _offline("timm", name) from exc  # huggingface_hub's offline errors are OSErrors and ValueErrors
        raise ModelError(f"spec: timm cannot create {name!r} ({text.splitlines()[0] if text else exc!r})") from exc
    if weights is not None and weights != PRETRAINED:
        load_state(net, read_state(weights, trust), repr(str(weights)), f"timm's {name}")
    cfg = getattr(net, "pretrained_cfg", None) or {}
    cfg = cfg if isinstance(cfg, dict) else getattr(cfg, "__dict__", {})  # a PretrainedCfg dataclass in some timm
    return Normalized(net, cfg.get("mean") or IMAGENET_MEAN, cfg.get("std") or IMAGENET_STD, _timm_classes(net),
                      tuple(cfg.get("input_size") or (3, 224, 224)),
                      {"source": f"timm:{name}"})


def load_model(spec: str | nn.Module = "shapes", *, device: str | torch.device = "auto",
               trust: bool = False, weights: Weights = PRETRAINED, output: Output = None,
               classes: Sequence[str] | None = None,
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
        weights: ``"pretrained"`` (default: the spec's own weights; for ``torchvision:`` / ``timm:`` the
            library downloads or finds them in its cache, and offline that is a one-line error that says
            what to pass instead); a path to a state dict (``.safetensors``, or a ``torch.save`` file read
            with ``weights_only=True``; a checkpoint dict holding it under ``"state_dict"`` / ``"model"``
            and a ``module.`` prefix are fine) loaded into the spec's architecture; or ``None``: the
            architecture untrained (built-in names and files, ``torchvision:``, ``timm:``). Zoo models keep
            their ImageNet class names, normalisation and input size from the library's own tables (no
            download). CLI: ``--weights PATH|none``.
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
        >>> net = load_model("torchvision:resnet50", weights="resnet50.safetensors")  # doctest: +SKIP
    """
    dev = resolve_device(device)
    output = check_output(output)
    given = _conventions(classes, input_size, mean, std)
    weights = _check_weights(weights)
    if isinstance(spec, nn.Module):
        if weights != PRETRAINED:
            raise InputError("weights: only for a spec that names an architecture; load the state dict into your "
                             "module (net.load_state_dict(...)) and pass load_model(net)")
        return _finish(_with_output(_wrap(spec, type(spec).__name__), output, given), dev)
    # building a network initialises its weights from the global generator: the caller's state is restored
    with torch.random.fork_rng(devices=[]):
        model = _load(spec, trust, weights)
    if weights != PRETRAINED and isinstance(model, Normalized):
        model.meta["weights"] = _weights_name(weights)
    return _finish(_with_output(model, output, given), dev)


def _check_weights(weights: object) -> Weights:
    if weights is None or (isinstance(weights, (str, os.PathLike)) and str(weights)):
        return weights
    raise InputError(f"weights: expected 'pretrained', a path to a state dict or None (untrained), got {weights!r}")


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


def _load(spec: object, trust: bool, weights: Weights = PRETRAINED) -> nn.Module:
    """The model named by a spec with ``weights`` (see :func:`load_model`), on the CPU."""
    if not isinstance(spec, str) or not spec:
        raise ModelError(f"spec: expected a model name, path or 'package.module:factory', got {spec!r}")
    if spec in BUILTIN:
        path = WEIGHTS_DIR / f"{spec}.safetensors"
        if not path.is_file():
            raise ModelError(f"spec: the weights of built-in {spec!r} are missing from the installation "
                             f"({path}); reinstall underhood or retrain with `underhood train --arch {spec}`")
        model = _from_safetensors(path, weights, trust)
        model.meta["source"] = spec
        return model
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "torchvision":
        return _from_torchvision(rest, weights, trust)
    if sep and prefix == "timm":
        return _from_timm(rest, weights, trust)
    if sep and not Path(spec).exists() and len(prefix) > 1:
        return _from_factory(spec, weights, trust)
    return _from_file(Path(spec), trust, weights)
