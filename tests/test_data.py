"""Contract and determinism tests of the built-in datasets and the image/dataset readers."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import underhood
from underhood.core.errors import DataError, InputError
from underhood.data import ImageSet, cifar10, digits, mnist, shapes


def test_shapes_contract():
    d = shapes(40, seed=3)
    assert d.images.shape == (40, 3, 64, 64) and d.images.dtype == torch.float32
    assert d.images.min() >= 0 and d.images.max() <= 1
    assert d.labels.shape == (40,) and d.labels.dtype == torch.long
    assert d.masks.shape == (40, 1, 64, 64) and d.masks.dtype == torch.bool
    assert len(d.classes) >= 8 and {"circle", "square", "triangle", "star", "cross", "ring"} <= set(d.classes)
    assert d.marker_masks is None
    # every image has an object of reasonable size (radius 0.17..0.32 of the side)
    area = d.masks.float().mean((1, 2, 3))
    assert (area > 0.01).all() and (area < 0.4).all()


def test_shapes_same_seed_same_images_and_prefix():
    a, b = shapes(300, seed=7), shapes(300, seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    prefix = shapes(10, seed=7)
    assert torch.equal(prefix.images, a.images[:10]) and torch.equal(prefix.masks, a.masks[:10])
    assert not torch.equal(shapes(10, seed=8).images, prefix.images)


def test_shapes_sizes_and_all_classes():
    d = shapes(400, size=32, seed=0)
    assert d.images.shape[-2:] == (32, 32)
    assert set(d.labels.tolist()) == set(range(len(d.classes)))


def test_shapes_object_pixels_have_the_object_colour():
    d = shapes(20, seed=11)
    for img, mask in zip(d.images, d.masks):
        inside = img[:, mask[0]]
        # one flat colour plus noise: small spread inside the mask
        assert inside.std(1).max() < 0.1


def test_spurious_marker_is_class_correlated_and_masked():
    d = shapes(256, seed=2, spurious=1.0)
    assert d.marker_masks is not None
    planted = d.marker_masks.flatten(1).any(1)
    assert planted.all()
    assert not (d.marker_masks & d.masks).any()
    # the marker's colour is a function of the class: same class -> same mean marker colour
    colours = {}
    for img, mk, y in zip(d.images, d.marker_masks, d.labels.tolist()):
        colours.setdefault(y, []).append(img[:, mk[0]].mean(1))
    spread = [torch.stack(c).std(0).max().item() for c in colours.values() if len(c) > 1]
    means = torch.stack([torch.stack(c).mean(0) for c in colours.values()])
    assert max(spread) < 0.08
    assert torch.cdist(means, means).fill_diagonal_(9).min() > 0.05
    none = shapes(64, seed=2, spurious=0.0)
    assert none.marker_masks is None
    half = shapes(1000, seed=4, spurious=0.3)
    assert 0.2 < half.marker_masks.flatten(1).any(1).float().mean() < 0.4


@pytest.mark.parametrize("kwargs, word", [({"n": -1}, "n:"), ({"n": 4, "size": 8}, "size:"),
                                          ({"n": 4, "spurious": 2.0}, "spurious:")])
def test_shapes_bad_arguments(kwargs, word):
    n = kwargs.pop("n")
    with pytest.raises(InputError, match=word):
        shapes(n, **kwargs)


def test_digits_fixed_split():
    test, train = digits(split="test"), digits(split="train")
    assert test.images.shape == (360, 1, 32, 32) and len(train) == 1797 - 360
    assert torch.equal(digits(split="test").images, test.images)
    assert test.images.min() >= 0 and test.images.max() <= 1
    # the split is a partition: no test image appears in train
    flat_train = {tuple(x.flatten()[::37].tolist()) for x in train.images}
    assert not any(tuple(x.flatten()[::37].tolist()) in flat_train for x in test.images[:50])
    with pytest.raises(InputError, match="split"):
        digits(split="valid")


def test_imageset_indexing_and_dataset():
    d = shapes(10, seed=1)
    x, y = d[3]
    assert torch.equal(d[np.int64(3)][0], x) and torch.equal(d[torch.tensor(3)][0], x)
    assert x.shape == (3, 64, 64) and int(y) == int(d.labels[3])
    sub = d[2:5]
    assert isinstance(sub, ImageSet) and len(sub) == 3 and sub.masks.shape[0] == 3
    loader = torch.utils.data.DataLoader(d, batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 64, 64) and yb.shape == (4,)


def _write(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)


def test_load_image_modes_and_resize(tmp_path):
    rgb = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)
    _write(tmp_path / "a.png", rgb)
    x = underhood.load_image(tmp_path / "a.png")
    assert x.shape == (1, 3, 40, 60) and torch.allclose(x[0].permute(1, 2, 0), torch.tensor(rgb / 255.0).float())
    y = underhood.load_image(tmp_path / "a.png", size=32)
    assert y.shape == (1, 3, 32, 32)
    assert underhood.load_image(tmp_path / "a.png", size=(20, 10)).shape == (1, 3, 20, 10)
    grey = (np.arange(400).reshape(20, 20) % 256).astype(np.uint8)
    _write(tmp_path / "g.png", grey)
    assert underhood.load_image(tmp_path / "g.png").shape == (1, 3, 20, 20)
    assert underhood.load_image(tmp_path / "g.png", channels=1).shape == (1, 1, 20, 20)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, :, 3] = 255  # top half opaque red, bottom transparent -> white
    _write(tmp_path / "t.png", rgba)
    t = underhood.load_image(tmp_path / "t.png")
    assert torch.allclose(t[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(t[0, :, 7, 0], torch.ones(3))
    smooth = np.stack([*np.meshgrid(np.linspace(0, 255, 60), np.linspace(0, 255, 40)), np.full((40, 60), 128.0)], -1)
    Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / "j.jpg", quality=95)
    j = underhood.load_image(tmp_path / "j.jpg")
    assert j.shape == (1, 3, 40, 60) and (j[0].permute(1, 2, 0) - torch.tensor(smooth / 255)).abs().mean() < 0.02


def test_load_image_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        underhood.load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="cannot read"):
        underhood.load_image(tmp_path / "bad.png")
    with pytest.raises(InputError, match="size"):
        _write(tmp_path / "ok.png", np.zeros((4, 4, 3), np.uint8))
        underhood.load_image(tmp_path / "ok.png", size=0)


def test_from_folder(tmp_path):
    for k, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            _write(tmp_path / name / f"{i}.png", np.full((10, 12, 3), 40 * k + i, np.uint8))
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    d = ImageSet.from_folder(tmp_path, size=8)
    assert d.classes == ["cat", "dog"] and d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.images.shape == (6, 3, 8, 8)
    assert torch.allclose(d.images[4], torch.full((3, 8, 8), 41 / 255))
    with pytest.raises(DataError, match="sub-folder"):
        ImageSet.from_folder(tmp_path / "cat")


def _idx(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(">u1").tobytes()


def test_mnist_idx_files(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images, 0x08)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(labels, 0x08))
    d = mnist(tmp_path, split="test")
    assert d.images.shape == (5, 1, 28, 28) and d.labels.tolist() == [3, 1, 4, 1, 5]
    assert torch.allclose(d.images[2, 0], torch.tensor(images[2] / 255.0).float())
    with pytest.raises(DataError, match="train-images"):
        mnist(tmp_path, split="train")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(labels, 0x08)[:-2])
    with pytest.raises(DataError, match="truncated"):
        mnist(tmp_path, split="test")


def test_cifar10_binary_and_python(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (4, 3072)).astype(np.uint8)
    labels = np.array([0, 9, 2, 5], np.uint8)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "test_batch.bin").write_bytes(np.concatenate([labels[:, None], pixels], 1).tobytes())
    b = cifar10(tmp_path / "bin", split="test")
    assert b.images.shape == (4, 3, 32, 32) and b.labels.tolist() == [0, 9, 2, 5]
    assert b.classes[9] == "truck"
    assert torch.allclose(b.images[1, 0, 0, :3], torch.tensor(pixels[1, :3] / 255.0).float())
    (tmp_path / "py").mkdir()
    with open(tmp_path / "py" / "test_batch", "wb") as f:
        pickle.dump({b"data": pixels, b"labels": labels.tolist()}, f)
    p = cifar10(tmp_path / "py", split="test")
    assert torch.equal(p.images, b.images) and torch.equal(p.labels, b.labels)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DataError, match="refusing"):
        cifar10(tmp_path / "py", split="test")
