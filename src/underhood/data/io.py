"""Reading the standard files of real datasets (MNIST idx, CIFAR-10); image files: :mod:`.images`."""

from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..core.errors import DataError, InputError
from .images import load_image, resize_crop  # noqa: F401  (image files; re-exported for old imports)
from .imageset import ImageSet

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _read_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _find(root: Path, names: list[str]) -> Path:
    for name in names:
        for candidate in (root / name, root / (name + ".gz")):
            if candidate.is_file():
                return candidate
    raise DataError(f"path: none of {names} (or .gz) found in {str(root)!r}; give the folder holding the files")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    data = _read_maybe_gzip(Path(path))
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"path: {str(path)!r} is not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise DataError(f"path: {str(path)!r} has an unknown IDX data type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = data[4 + 4 * ndim:]
    dtype = np.dtype(dtypes[data[2]])
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"path: {str(path)!r} is truncated: header says {shape}, file has {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def mnist(path: str | os.PathLike, *, split: str = "train") -> ImageSet:
    """MNIST (or Fashion-MNIST) from its standard IDX files in folder ``path``."""
    if split not in ("train", "test"):
        raise InputError(f"split: expected 'train' or 't10k'-style 'test', got {split!r}")
    root = Path(path)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(root, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"]))
    labels = read_idx(_find(root, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"path: MNIST files in {str(root)!r} disagree: images {images.shape}, labels {labels.shape}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return ImageSet(x, torch.from_numpy(labels.astype(np.int64)), [str(k) for k in range(10)],
                    info={"dataset": "mnist", "path": str(root), "split": split})


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR python batches, which hold only dicts, lists, bytes and NumPy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _cifar_python(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in files:
        try:
            batch = _ArrayUnpickler(io.BytesIO(f.read_bytes()), encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise DataError(f"path: {str(f)!r} is not a CIFAR-10 python batch ({exc})") from exc
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8))
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _cifar_binary(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    records = []
    for f in files:
        raw = np.frombuffer(f.read_bytes(), dtype=np.uint8)
        if raw.size % 3073:
            raise DataError(f"path: {str(f)!r} is not a CIFAR-10 binary batch (size not a multiple of 3073)")
        records.append(raw.reshape(-1, 3073))
    rec = np.concatenate(records)
    return rec[:, 1:], rec[:, 0].astype(np.int64)


def cifar10(path: str | os.PathLike, *, split: str = "train") -> ImageSet:
    """CIFAR-10 from its standard files: the python batches (``data_batch_1`` ..., ``test_batch``)
    or the binary ones (``data_batch_1.bin`` ..., ``test_batch.bin``) in folder ``path``.

    The python batches are read with an unpickler that accepts NumPy arrays only.
    """
    if split not in ("train", "test"):
        raise InputError(f"split: expected 'train' or 'test', got {split!r}")
    root = Path(path)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    binary = [root / f"{n}.bin" for n in names if (root / f"{n}.bin").is_file()]
    python = [root / n for n in names if (root / n).is_file()]
    if binary:
        data, labels = _cifar_binary(binary)
    elif python:
        data, labels = _cifar_python(python)
    else:
        raise DataError(f"path: no CIFAR-10 {split} batches ({names[0]}[.bin] ...) in {str(root)!r}")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return ImageSet(x, torch.from_numpy(labels), list(CIFAR10_CLASSES),
                    info={"dataset": "cifar10", "path": str(root), "split": split})
