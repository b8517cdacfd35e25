"""One result protocol for every family: ``summary()``, ``save(dir)``, a compact ``repr``, :func:`load`.

A family's result is a dataclass that also derives from :class:`Result`::

    @dataclass(repr=False)
    class AttackResult(Result):
        adversarial: torch.Tensor
        ...
        def scalars(self) -> dict:          # the key figures (optional: numbers and strings by default)
            return {"success_rate": ...}

and gets:

- ``summary()``: a short text table of :meth:`Result.scalars` (a :class:`Summary`, a ``str``);
- ``save(dir)``: every tensor (also inside dicts, lists and nested results; a module's
  ``state_dict``) into ``dir/result.safetensors`` and everything else into a versioned
  ``dir/manifest.json``, each written atomically; :func:`load` rebuilds the result;
- a ``repr`` with shapes and key figures, never whole tensors, and an HTML one in notebooks
  that draws ``self.figure()`` when the result has one.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import DataError
from .io import MANIFEST_VERSION, write_tensors, write_text
from .version import __version__

TENSORS = "result.safetensors"
REPR_LIMIT = 400  # characters of a repr before it is cut


class Summary(str):
    """The text table :meth:`Result.summary` returns.

    Results used to return a dict from ``summary()``; indexing a summary by a key still gives
    that value, with a ``DeprecationWarning`` (use ``result.scalars()[key]``).
    """

    def __new__(cls, text: str, values: Mapping[str, Any]) -> Summary:
        self = super().__new__(cls, text)
        self._values = dict(values)
        return self

    def _old(self) -> dict[str, Any]:
        warnings.warn("summary() is a text table now; use scalars() for the numbers", DeprecationWarning,
                      stacklevel=3)
        return self._values

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._old()[key]
        return super().__getitem__(key)

    def keys(self):
        return self._old().keys()

    def items(self):
        return self._old().items()

    def get(self, key: str, default: Any = None) -> Any:
        return self._old().get(key, default)


def _plain(value: Any) -> Any:
    """A scalar as a plain Python value (0-d tensors and NumPy scalars unwrapped), else ``value``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.ndim == 0:
        return value.item()
    if hasattr(value, "item") and type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(_plain(value), (bool, int, float, str))


def _format(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _shape(t: torch.Tensor) -> str:
    dtype = str(t.dtype).replace("torch.", "")
    return f"[{', '.join(map(str, t.shape))}] {dtype}" if t.ndim else f"scalar {dtype}"


def _describe(value: Any) -> str | None:
    """A short description of a non-scalar field (``None``: not worth a mention in the repr)."""
    if isinstance(value, torch.Tensor):
        return _shape(value)
    if isinstance(value, nn.Module):
        return f"<{type(value).__name__}>"
    if isinstance(value, Mapping) and value:
        inner = [v for v in value.values() if isinstance(v, torch.Tensor)]
        if inner:
            return f"{{{len(value)} x {_shape(inner[0])}}}" if len(inner) == len(value) else f"{{{len(value)} keys}}"
        return None
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(v, torch.Tensor) for v in value):
            return f"[{len(value)} x {_shape(value[0])}]"
        return f"[{len(value)} items]"
    return None


class Result:
    """Base of every family's result dataclass: summary, save, compact repr (see the module docstring)."""

    def scalars(self) -> dict[str, Any]:
        """The key figures as plain numbers and strings: by default every scalar field."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if _is_scalar(getattr(self, f.name)) and not f.name.startswith("_")}

    def summary(self) -> Summary:
        """A short text table: the result's name, then one ``key  value`` line per key figure."""
        values = self.scalars()
        width = max((len(k) for k in values), default=0)
        lines = [type(self).__name__] + [f"  {k:<{width}}  {_format(v)}" for k, v in values.items()]
        return Summary("\n".join(lines), values)

    def __repr__(self) -> str:
        figures = ", ".join(f"{k}={_format(v)!s}" for k, v in self.scalars().items())
        shapes = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            text = _describe(getattr(self, f.name))
            if text is not None:
                shapes.append(f"{f.name}={text}")
        body = "; ".join(part for part in (figures, ", ".join(shapes)) if part)
        text = f"{type(self).__name__}({body})"
        return text if len(text) <= REPR_LIMIT else text[:REPR_LIMIT - 5] + " ...)"

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(f"<tr><td>{escape(k)}</td><td style='text-align:right'>{escape(_format(v))}</td></tr>"
                       for k, v in self.scalars().items())
        html = f"<div><b>{escape(type(self).__name__)}</b><table>{rows}</table>"
        draw = getattr(self, "figure", None)
        if callable(draw):
            try:
                fig = draw()
                buffer = io.BytesIO()
                fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
                html += f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"
            except Exception as exc:  # a repr must never raise: say why there is no picture
                html += f"<p>(no figure: {escape(str(exc))})</p>"
        return html + "</div>"

    def save(self, path: str | os.PathLike, **info: Any) -> Path:
        """Write the result into folder ``path``: tensors to ``result.safetensors``, the rest to ``manifest.json``.

        ``info`` (the command, the model spec, the files written beside it ...) is added to the
        manifest. Both files are written atomically, the manifest last. Returns the folder.
        """
        out = Path(path)
        if out.exists() and not out.is_dir():
            raise DataError(f"path: {str(out)!r} is a file; give a folder to save the result into")
        tensors: dict[str, torch.Tensor] = {}
        fields = _encode(self, "", tensors)
        write_tensors(out / TENSORS, _unshared(tensors))
        manifest = {"manifest_version": MANIFEST_VERSION, "underhood_version": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "result": type(self).__name__,
                    "summary": _json(self.scalars()), "tensors": TENSORS, "fields": fields, **_json(info)}
        write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
        return out


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of tensors that share storage with an earlier one (safetensors refuses shared memory)."""
    seen: set[tuple[str, int]] = set()
    out = {}
    for key, t in tensors.items():
        t = t.detach()
        ptr = (str(t.device), t.untyped_storage().data_ptr()) if t.numel() else None
        out[key] = t.clone() if ptr in seen else t
        if ptr is not None:
            seen.add(ptr)
    return out


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON-able data; tensors go to ``tensors[key]`` and are replaced by ``{"tensor": key}``."""
    value = _plain(value)
    if isinstance(value, torch.Tensor):
        tensors[key] = value
        return {"tensor": key}
    if isinstance(value, nn.Module):
        state = {k: _encode(v, f"{key}.{k}", tensors) for k, v in value.state_dict().items()}
        return {"module": type(value).__name__, "state_dict": state}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {"dataclass": f"{cls.__module__}.{cls.__qualname__}",
                "fields": {f.name: _encode(getattr(value, f.name), f"{key}.{f.name}".lstrip("."), tensors)
                           for f in dataclasses.fields(value)}}
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value):
            return {"dict": {k: _encode(v, f"{key}.{k}".lstrip("."), tensors) for k, v in value.items()}}
        return {"items": [[_encode(k, "", {}), _encode(v, f"{key}.{i}".lstrip("."), tensors)]
                          for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{key}.{i}".lstrip("."), tensors) for i, v in enumerate(value)]
        return items if isinstance(value, list) else {"tuple": items}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": str(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # NumPy arrays
        return _encode(torch.as_tensor(value), key, tensors)
    return {"repr": repr(value)[:200]}


def _json(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain JSON for the manifest's readable parts: scalars as they are (non-finite floats as strings)."""
    out = {}
    for k, v in values.items():
        v = _plain(v)
        if isinstance(v, float) and not math.isfinite(v):
            v = str(v)
        elif isinstance(v, Mapping):
            v = _json(v)
        elif isinstance(v, (list, tuple)):
            v = [_json({"v": x})["v"] for x in v]
        elif not (v is None or isinstance(v, (bool, int, float, str))):
            v = os.fspath(v) if isinstance(v, os.PathLike) else repr(v)[:200]
        out[str(k)] = v
    return out


def _decode(data: Any, tensors: Mapping[str, torch.Tensor], trust: bool = False) -> Any:
    if isinstance(data, list):
        return [_decode(v, tensors, trust) for v in data]
    if not isinstance(data, dict):
        return data
    if "tensor" in data:
        return tensors[data["tensor"]]
    if "dict" in data:
        return {k: _decode(v, tensors, trust) for k, v in data["dict"].items()}
    if "items" in data:
        return {_decode(k, tensors, trust): _decode(v, tensors, trust) for k, v in data["items"]}
    if "tuple" in data:
        return tuple(_decode(v, tensors, trust) for v in data["tuple"])
    if "float" in data:
        return float(data["float"])
    if "module" in data:  # a module cannot be rebuilt from its weights alone: its state_dict is returned
        return {k: _decode(v, tensors, trust) for k, v in data["state_dict"].items()}
    if "dataclass" in data:
        values = {k: _decode(v, tensors, trust) for k, v in data["fields"].items()}
        module, _, name = data["dataclass"].rpartition(".")
        cls = None
        if (trust or module.startswith("underhood.")) and "." not in name:  # importing runs a module's code
            cls = getattr(importlib.import_module(module), name, None)
        if not (isinstance(cls, type) and issubclass(cls, Result) and dataclasses.is_dataclass(cls)):
            return values
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        obj = cls(**{k: v for k, v in values.items() if k in init})
        for k, v in values.items():
            if k not in init:
                object.__setattr__(obj, k, v)
        return obj
    if "repr" in data:
        return data["repr"]
    return data


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu", trust: bool = False) -> Any:
    """The result saved by :meth:`Result.save` in folder ``path``, rebuilt (tensors on ``device``).

    A model inside a result comes back as its ``state_dict``. Result classes outside underhood are
    rebuilt only with ``trust=True`` (it imports the module the manifest names); else as dicts.
    """
    from safetensors.torch import load_file

    folder = Path(path)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        tensors = load_file(str(folder / manifest.get("tensors", TENSORS)), device=str(device))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"path: no saved result in {str(folder)!r} ({exc}); give a folder written by "
                        "result.save()") from None
    if "fields" not in manifest:
        raise DataError(f"path: {str(folder)!r} holds a manifest without a saved result")
    return _decode(manifest["fields"], tensors, trust)


@dataclasses.dataclass(repr=False)
class Collection(Result):
    """Several named results saved and loaded as one (a command that ran several models or layers).

    ``scalars()`` prefixes each item's key figures with its name.
    """

    items: dict[str, Result]

    def scalars(self) -> dict[str, Any]:
        return {f"{name}.{k}": v for name, item in self.items.items() for k, v in item.scalars().items()}

    def __getitem__(self, name: str) -> Result:
        return self.items[name]

    def __len__(self) -> int:
        return len(self.items)
