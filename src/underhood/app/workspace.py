"""What the explorer works on: the loaded models, the dataset, the user's images and the caches.

One :class:`Workspace` per server. Models are used under a lock each (library calls hook the
model for the length of one call, so two calls on one model must not overlap); background
jobs take the lock per chunk, so the page's own requests slip in between and the server stays
responsive. Computed results are cached in memory (small LRU) and on disk under
``out/cache`` keyed by (weights hash, data, layer, settings), so a second visit is instant.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.distributed import model_digest
from ..core.errors import DataError, InputError, LayerError, UnderhoodError
from ..core.io import write_bytes
from ..core.layers import LayerInfo, layers, stages
from .jobs import Jobs

UPLOAD_LIMIT = 10 * 2**20
"""Largest accepted upload, bytes (``--upload-limit``)."""

DATA_DEFAULT = "shapes:2000"
PREDICT_CHUNK = 256


class NotFound(UnderhoodError):
    """A model, layer, unit, image or job the request names does not exist (HTTP 404)."""


class TooLarge(UnderhoodError):
    """An upload past the size limit (HTTP 413)."""


class Unsupported(UnderhoodError):
    """An upload that is not an image (HTTP 415)."""


@dataclass
class Entry:
    """One loaded model and what the page needs to know about it."""

    id: str
    spec: str
    model: nn.Module
    classes: list[str]
    input_size: tuple[int, int, int]
    table: list[LayerInfo]
    stages: list[str]
    digest: str
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    predicting: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def layer(self, name: str) -> LayerInfo:
        """The layer-table row of ``name``; :class:`NotFound` naming close matches otherwise."""
        for row in self.table:
            if row.name == name:
                return row
        import difflib

        close = difflib.get_close_matches(name, [r.name for r in self.table], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; GET /api/model lists the layers"
        raise NotFound(f"layer: {name!r} is not a layer of {self.id}{hint}")

    def channels(self, name: str) -> int:
        """How many units (channels) ``name`` has: dim 0 of an NCHW/[N, C] output, the last of tokens/NHWC."""
        row = self.layer(name)
        shape = row.output_shape or ()
        if not shape:
            raise LayerError(f"layer: {name!r} has no tensor output; pick another layer")
        return int(shape[-1] if row.layout in ("nhwc", "tokens") else shape[0])

    def unit(self, layer: str, unit: int) -> int:
        """``unit`` checked against the layer's channel count (:class:`NotFound` otherwise)."""
        count = self.channels(layer)
        if not 0 <= int(unit) < count:
            raise NotFound(f"unit: {layer!r} has units 0..{count - 1}, got {unit}")
        return int(unit)


def _model_id(spec: str, taken: Sequence[str]) -> str:
    base = Path(spec).stem if ("/" in spec or spec.endswith((".pt", ".pth", ".safetensors"))) else spec
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in base) or "model"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


def _nbytes(value: Any, depth: int = 0) -> int:
    """Roughly how much memory ``value`` holds: tensors, arrays and bytes counted, containers walked."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, (bytes, str)):
        return len(value)
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if depth < 3 and isinstance(value, dict):
        return sum(_nbytes(v, depth + 1) for v in value.values())
    if depth < 3 and isinstance(value, (list, tuple)):
        return sum(_nbytes(v, depth + 1) for v in value)
    return 64


class Cache:
    """Bytes and JSON on disk under ``root``, keyed by a hash of what they depend on; an LRU in memory in front
    (at most ``memory`` entries and about ``max_bytes`` of tensors, arrays and bytes)."""

    def __init__(self, root: Path | None, memory: int = 512, max_bytes: int = 512 * 2**20) -> None:
        self.root = root
        self._mem: OrderedDict[str, Any] = OrderedDict()
        self._bytes: dict[str, int] = {}
        self._size = memory
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    @staticmethod
    def key(*parts: object) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps(parts, sort_keys=True, default=str).encode())
        return h.hexdigest()

    def remember(self, key: str, value: Any) -> Any:
        with self._lock:
            self._mem[key] = value
            self._mem.move_to_end(key)
            self._bytes[key] = _nbytes(value)
            total = sum(self._bytes.get(k, 0) for k in self._mem)
            while len(self._mem) > 1 and (len(self._mem) > self._size or total > self._max_bytes):
                old, _ = self._mem.popitem(last=False)
                total -= self._bytes.pop(old, 0)
        return value

    def forget(self) -> None:
        """Empty the memory (the disk stays): what a restart of the server sees."""
        with self._lock:
            self._mem.clear()
            self._bytes.clear()

    def recall(self, key: str) -> Any:
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                return self._mem[key]
        return None

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """The in-memory value for ``key``, computed once."""
        value = self.recall(key)
        return value if value is not None else self.remember(key, compute())

    def load_json(self, key: str) -> Any:
        """The JSON stored under ``key`` on disk (memory first), or ``None``."""
        value = self.recall("json:" + key)
        if value is not None or self.root is None:
            return value
        path = self.root / f"{key}.json"
        if path.is_file():
            try:
                return self.remember("json:" + key, json.loads(path.read_text()))
            except (OSError, ValueError):
                return None
        return None

    def load_tensor(self, key: str) -> torch.Tensor | None:
        """The tensor stored under ``key`` (memory first, then disk), or ``None``."""
        value = self.recall(key)
        if value is not None or self.root is None:
            return value
        path = self.root / f"{key}.safetensors"
        if path.is_file():
            from safetensors.torch import load_file

            try:
                return self.remember(key, load_file(str(path))["value"])
            except (OSError, KeyError, ValueError, RuntimeError):
                return None
        return None

    def store_tensor(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """Keep ``value`` in memory and write it atomically to disk (safetensors)."""
        self.remember(key, value)
        if self.root is not None:
            from ..core.io import write_tensors

            write_tensors(self.root / f"{key}.safetensors", {"value": value})
        return value

    def store_json(self, key: str, value: Any) -> Any:
        """Keep ``value`` in memory and write it atomically to disk."""
        self.remember("json:" + key, value)
        if self.root is not None:
            write_bytes(self.root / f"{key}.json", json.dumps(value).encode())
        return value


class Workspace:
    """The models (the first is the main one), the dataset, uploaded images, caches and jobs.

    Args:
        models: model specs, modules or ``(name, module)`` pairs (one or two: two are shown side by side).
        data: a dataset spec (default: the model's own held-out data, else ``shapes:2000``) or an ImageSet.
        out: the output folder (cache, uploads, the explorer's report); ``None``: a temporary one.
        device: where the models run.
        upload_limit: largest accepted upload in bytes.
    """

    def __init__(self, models: Sequence[str | nn.Module | tuple[str, nn.Module]] = ("shapes",), data: Any = None, *,
                 out: str | Path | None = None, device: str = "auto", upload_limit: int = UPLOAD_LIMIT,
                 trust: bool = False, seed: int = 0) -> None:
        from ..models.loading import load_model

        if not models:
            raise InputError("models: give at least one model (e.g. 'shapes')")
        if out is None:
            import tempfile

            out = tempfile.mkdtemp(prefix="underhood-explore-")
        self.out = Path(out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = Cache(self.out / "cache")
        self.jobs = Jobs()
        self.upload_limit = int(upload_limit)
        self.seed = seed
        self.models: dict[str, Entry] = {}
        for spec in models:
            if isinstance(spec, tuple):  # (name, an already loaded module)
                name, model = spec
            elif isinstance(spec, nn.Module):
                name, model = type(spec).__name__.lower(), spec
            else:
                name, model = str(spec), load_model(spec, device=device, trust=trust)
            id = _model_id(name, list(self.models))
            self.models[id] = self._entry(id, name, model)
        main = self.main
        self.data, self.data_spec = self._data(data, main)
        self.images: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ models
    def _entry(self, id: str, spec: str, model: nn.Module) -> Entry:
        size = tuple(getattr(model, "input_size", None) or (3, 64, 64))
        if len(size) == 2:
            size = (3, *size)
        table = layers(model, input_size=size)
        try:
            stage_names = stages(model, input_size=size)
        except UnderhoodError:
            stage_names = []
        classes = list(getattr(model, "classes", None) or [])
        if not classes:
            from ..core.batching import logits

            with torch.no_grad():
                k = logits(model, torch.zeros(1, *size), 1).shape[-1]
            classes = [str(i) for i in range(k)]
        return Entry(id, spec, model, classes, size, table, stage_names, model_digest(model))

    @property
    def main(self) -> Entry:
        return next(iter(self.models.values()))

    def entry(self, model: str | None) -> Entry:
        """The model ``model`` names (default: the main one); :class:`NotFound` otherwise."""
        if model in (None, ""):
            return self.main
        found = self.models.get(model)
        if found is None:
            raise NotFound(f"model: {model!r} is not loaded; loaded: {', '.join(self.models)}")
        return found

    # ------------------------------------------------------------------ data
    def _data(self, data: Any, main: Entry) -> tuple[Any, str]:
        from ..data import from_spec
        from ..data.imageset import ImageSet

        if isinstance(data, ImageSet):
            return data, str(data.info.get("name", "images"))
        spec = data
        if spec is None:
            meta = getattr(main.model, "meta", {}) or {}
            spec = "digits" if meta.get("dataset") == "digits" else DATA_DEFAULT
        c, h, w = main.input_size
        return from_spec(spec, size=(h, w), channels=c), spec

    def _predictions_key(self, entry: Entry) -> str:
        return self.cache.key("predictions", entry.digest, self.data_spec, len(self.data))

    def predictions_ready(self, entry: Entry) -> torch.Tensor | None:
        """The dataset's probabilities if they were computed already (else ``None``: nothing is computed)."""
        return self.cache.load_tensor(self._predictions_key(entry))

    def predictions_of(self, entry: Entry, index: torch.Tensor) -> torch.Tensor:
        """Probabilities ``[len(index), K]`` of some dataset images: from the full pass when it is done, else
        computed for these images alone (a page of the browser need not wait for the whole dataset)."""
        full = self.predictions_ready(entry)
        if full is not None:
            return full[index]
        from ..core.batching import logits

        with entry.lock, torch.no_grad():
            return logits(entry.model, self.data.images[index], PREDICT_CHUNK).softmax(-1).cpu()

    def warm(self) -> None:
        """Start the dataset's predictions of every model in the background (the browser's filters need them)."""
        for entry in self.models.values():
            self.jobs.submit("predictions", self._predictions_key(entry),
                             lambda job, e=entry: (self.predictions(e), None)[1])

    def predictions(self, entry: Entry) -> torch.Tensor:
        """Softmax probabilities ``[N, K]`` of ``entry`` on the whole dataset (computed once, cached on disk)."""
        key = self._predictions_key(entry)
        with entry.predicting:  # one pass at a time: a second caller waits for the first and reads its result
            done = self.cache.load_tensor(key)
            if done is not None:
                return done
            from ..core.batching import batches, logits

            parts = []
            for part in batches(len(self.data), PREDICT_CHUNK):  # the lock per chunk: the page stays responsive
                with entry.lock, torch.no_grad():
                    parts.append(logits(entry.model, self.data.images[part], PREDICT_CHUNK).softmax(-1).cpu())
            return self.cache.store_tensor(key, torch.cat(parts))

    def images_for(self, entry: Entry) -> torch.Tensor:
        """The dataset's images, checked against ``entry``'s input size (a dataset scan needs them equal)."""
        images = self.data.images
        if tuple(images.shape[1:]) != tuple(entry.input_size):
            raise InputError(f"model: the dataset's images are {list(images.shape[1:])} but {entry.id} takes "
                             f"{list(entry.input_size)}; use the model the dataset was loaded for")
        return images

    # ------------------------------------------------------------------ images
    def image(self, ref: str | None, entry: Entry | None = None) -> torch.Tensor:
        """The ``[C, H, W]`` image a reference names: ``"data:12"`` (a dataset image) or an upload's id.

        Uploaded images are stored at the main model's input size; for a second model of another
        size they are resized on the fly.
        """
        if ref in (None, ""):
            ref = "data:0"
        if ref.startswith("data:"):
            try:
                i = int(ref[5:])
            except ValueError:
                raise NotFound(f"image: {ref!r} is not data:INDEX") from None
            if not 0 <= i < len(self.data):
                raise NotFound(f"image: the dataset has images 0..{len(self.data) - 1}, got {ref!r}")
            x = self.data.images[i]
        else:
            x = self.images.get(ref)
            if x is None:
                raise NotFound(f"image: no image {ref!r}; upload it with POST /api/images")
        if entry is not None and tuple(x.shape) != tuple(entry.input_size):
            from ..data.images import resize_crop

            c, h, w = entry.input_size
            x = resize_crop(x[None], (h, w))[0]
            if x.shape[0] != c:
                x = x.mean(0, keepdim=True) if c == 1 else x.expand(c, -1, -1)
        return x

    def add_image(self, data: bytes, name: str = "upload") -> str:
        """Validate and store an uploaded image; its id (the same bytes give the same id).

        Raises :class:`TooLarge` past the size limit and :class:`Unsupported` when the bytes are
        not an image Pillow reads.
        """
        if len(data) > self.upload_limit:
            raise TooLarge(f"file: {len(data):,} bytes is over the {self.upload_limit:,}-byte limit; "
                           "send a smaller image (or start explore with a larger --upload-limit)")
        if not data:
            raise Unsupported("file: the upload is empty; send a PNG or JPEG image")
        digest = hashlib.blake2b(data, digest_size=8).hexdigest()
        ref = f"u{digest}"
        if ref in self.images:
            return ref
        from ..data.images import load_image

        c, h, w = self.main.input_size
        path = self.out / "uploads" / f"{ref}.bin"
        write_bytes(path, data)
        try:
            x = load_image(path, size=(h, w), channels=c)[0]
        except DataError as exc:
            path.unlink(missing_ok=True)
            raise Unsupported(f"file: {name!r} is not an image (Pillow cannot read it); send a PNG or JPEG"
                              ) from exc
        with self._lock:
            self.images[ref] = x
        return ref

    def add_tensor(self, x: torch.Tensor) -> str:
        """Store an image tensor ``[C, H, W]`` in ``[0, 1]`` (e.g. an adversarial example); its id."""
        buf = io.BytesIO()
        torch.save(x.detach().cpu(), buf)
        ref = "t" + hashlib.blake2b(buf.getvalue(), digest_size=8).hexdigest()
        with self._lock:
            self.images[ref] = x.detach().cpu().clamp(0, 1)
        return ref

    def close(self) -> None:
        self.jobs.shutdown()
