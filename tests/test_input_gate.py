"""The one input gate: pixels, sizes, image files, model outputs, and the messages and warnings around them."""

from __future__ import annotations

import json
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import underhood
from underhood.core.errors import DataError, InputError, ModelError
from underhood.core.inputs import check_inputs, minimum_size

# ---------------------------------------------------------------------------- a tiny model with heads


class Out:
    """A Hugging Face style output: an object with ``.logits`` (and another head)."""

    def __init__(self, logits: torch.Tensor, aux: torch.Tensor) -> None:
        self.logits, self.aux = logits, aux


class Heads(nn.Module):
    """A small conv net with a GAP + linear head and an auxiliary head, returning them as ``kind`` says."""

    input_size = (3, 16, 16)

    def __init__(self, kind: str = "tensor", seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                                      nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        self.aux = nn.Linear(8, 2)
        self.kind = kind

    def forward(self, x: torch.Tensor):
        h = self.pool(self.features(x)).flatten(1)
        aux = self.aux(h)  # before the logits: CAM reads the last nn.Linear to run as the head
        logits = self.fc(h)
        if self.kind == "tuple":
            return logits, aux
        if self.kind == "dict":
            return {"aux": aux, "logits": logits}
        if self.kind == "object":
            return Out(logits, aux)
        return logits


def images(n: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def one_thread():
    from underhood.core.device import threads

    with threads(1):
        yield


# ---------------------------------------------------------------------------- pixels


def _saliency(model, x):
    return underhood.attribution.saliency(model, x)


def _maps(model, x):
    return underhood.activations.maps(model, x, "features.1")


def _features(model, x):  # an ImageSet through dataset_images
    data = underhood.ImageSet(x, torch.zeros(len(x), dtype=torch.long), ["a"])
    return underhood.activations.features(model, data, ["features.1"])


def _invert(model, x):
    return underhood.synthesis.invert(model, x, "features.1", steps=1, seeds=(0,))


def _fgsm(model, x):
    return underhood.adversarial.fgsm(model, x, eps=0.01)


ENTRY_POINTS = {"attribution": _saliency, "activations": _maps, "dataset": _features, "synthesis": _invert,
                "adversarial": _fgsm}


def _bad(kind: str) -> tuple[torch.Tensor, str]:
    x = images()
    if kind == "nan":
        x[0, 0, :3, 0] = float("nan")
        return x, "3 pixel values are NaN or infinite"
    if kind == "inf":
        x[1, 2, 0, 0] = float("inf")
        return x, "1 pixel value is NaN or infinite"
    if kind == "0..255":
        return (x * 255).round(), "got values up to 255; divide by 255"
    if kind == "above":
        x[0, 0, 0, 0] = 1.01
        return x, r"got values up to 1\.01"
    x[0, 0, 0, 0] = -0.02
    return x, "got values down to -0.02; give un-normalised pixels"


@pytest.mark.parametrize("family", list(ENTRY_POINTS))
@pytest.mark.parametrize("kind", ["nan", "inf", "0..255", "above", "below"])
def test_every_family_refuses_bad_pixels(family, kind):
    x, message = _bad(kind)
    with pytest.raises(InputError, match=message) as info:
        ENTRY_POINTS[family](Heads(), x)
    assert "\n" not in str(info.value) and "[0, 1]" in str(info.value)


def test_float_round_off_is_clamped_not_refused():
    x = images()
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 1 + 1e-6, -1e-6
    y = check_inputs(Heads(), x)
    assert float(y.max()) == 1.0 and float(y.min()) == 0.0


def test_too_small_images_are_refused_with_the_minimum():
    model = underhood.load_model("shapes", device="cpu")
    with pytest.raises(InputError, match=r"images of 1x1 are smaller than this model's minimum 8x8; resize them "
                                         r"\(load_image\(path, size=64\)\)"):
        underhood.attribution.saliency(model, torch.rand(1, 3, 1, 1))
    with pytest.raises(InputError, match="minimum 8x8"):
        underhood.activations.maps(model, torch.rand(1, 3, 4, 4), "features.0")
    assert check_inputs(model, torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)  # the minimum itself passes


@pytest.mark.parametrize("name", ["shapes", "digits", "shapes-resnet"])
def test_minimum_size_is_where_a_forward_pass_starts_to_run(name):
    model = underhood.load_model(name, device="cpu")
    h, w = minimum_size(model)
    assert minimum_size(model) == (h, w)  # cached
    c = model.input_size[0]
    with torch.no_grad():
        assert model(torch.zeros(1, c, h, w)).shape[0] == 1
        for below in ((h - 1, w), (h, w - 1)):
            if min(below) >= 1:
                with pytest.raises((RuntimeError, ValueError)):
                    model(torch.zeros(1, c, *below))
    assert (h, w) == {"shapes": (8, 8), "digits": (32, 32), "shapes-resnet": (2, 2)}[name]


def test_minimum_size_probe_runs_no_hook_and_leaves_the_model_alone():
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 2, 5), nn.MaxPool2d(2), nn.Conv2d(2, 2, (1, 3)),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.net(x)

    model = Counting()
    assert minimum_size(model) == (6, 10)  # 5x5 conv, pool by 2, then a 1x3 conv
    assert model.calls == 0
    assert model(torch.zeros(1, 1, 6, 10)).shape == (1, 2)


# ---------------------------------------------------------------------------- image files


def _png16(path, array: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG written by hand (Pillow writes no 16-bit RGB)."""
    h, w = array.shape[:2]
    raw = b"".join(b"\x00" + array[i].astype(">u2").tobytes() for i in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@pytest.mark.parametrize("color_type, shape", [(0, (6, 5)), (2, (6, 5, 3))])
def test_16_bit_png_at_half_intensity_reads_half(tmp_path, color_type, shape):
    _png16(tmp_path / "h.png", np.full(shape, 32768, np.uint16), color_type)
    x = underhood.load_image(tmp_path / "h.png")
    assert x.shape == (1, 3, 6, 5) and torch.allclose(x, torch.full_like(x, 0.5), atol=0.003)
    assert torch.allclose(underhood.load_image(tmp_path / "h.png", channels=1), torch.full((1, 1, 6, 5), 0.5),
                          atol=0.003)


def test_16_bit_grey_keeps_its_depth(tmp_path):
    ramp = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    Image.fromarray(ramp).save(tmp_path / "r.png")  # Pillow mode I;16
    x = underhood.load_image(tmp_path / "r.png", channels=1)
    assert torch.allclose(x[0, 0], torch.tensor(ramp / 65535.0, dtype=torch.float32), atol=1e-6)


def test_grey_alpha_palette_and_cmyk(tmp_path):
    grey = np.full((3, 4), 51, np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert torch.allclose(underhood.load_image(tmp_path / "g.png"), torch.full((1, 3, 3, 4), 0.2))
    la = np.zeros((2, 2, 2), np.uint8)
    la[0, 0, 1] = 255  # one opaque black pixel, the rest transparent -> white
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert underhood.load_image(tmp_path / "la.png", channels=1)[0, 0].tolist() == [[0.0, 1.0], [1.0, 1.0]]
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 2] = 255
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = underhood.load_image(tmp_path / "a.png")
    assert x[0, :, 0, 0].tolist() == [0.0, 0.0, 1.0] and x[0, :, 1, 1].tolist() == [1.0, 1.0, 1.0]
    p = Image.new("P", (3, 3))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.save(tmp_path / "p.png", transparency=1)
    x = underhood.load_image(tmp_path / "p.png")
    assert x[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0] and x[0, :, 1, 1].tolist() == [1.0, 0.0, 0.0]
    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    assert torch.allclose(underhood.load_image(tmp_path / "c.jpg")[0, :, 1, 1], torch.tensor([1.0, 0.0, 0.0]),
                          atol=0.02)


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((4, 6, 3), np.uint8)
    a[:, :2] = 255  # a white band on the left of a 4x6 image
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "e.jpg", exif=exif, quality=100)
    x = underhood.load_image(tmp_path / "e.jpg")
    assert x.shape == (1, 3, 6, 4)
    assert float(x[0, 0, :2].mean()) > 0.9 and float(x[0, 0, 3:].mean()) < 0.1  # the band is now on top


def test_decompression_bombs_are_refused_before_decoding(tmp_path, monkeypatch):
    # a header that claims 100000 x 100000 pixels over an empty stream: decoding it would take 10 GB
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(
        ">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b""))
    with pytest.raises(DataError, match=r"10,000,000,000 pixels, above the limit of 64,000,000 pixels.*"
                                        r"max_pixels=N.*UNDERHOOD_MAX_PIXELS=N") as info:
        underhood.load_image(tmp_path / "bomb.png")
    assert "\n" not in str(info.value)
    assert Image.MAX_IMAGE_PIXELS != 64_000_000  # Pillow's global limit is restored
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "s.png")
    with pytest.raises(DataError, match="above the limit of 50 pixels"):
        underhood.load_image(tmp_path / "s.png", max_pixels=50)
    monkeypatch.setenv("UNDERHOOD_MAX_PIXELS", "99")
    with pytest.raises(DataError, match="above the limit of 99 pixels"):
        underhood.load_image(tmp_path / "s.png")
    assert underhood.load_image(tmp_path / "s.png", max_pixels=100).shape == (1, 3, 10, 10)
    monkeypatch.setenv("UNDERHOOD_MAX_PIXELS", "lots")
    with pytest.raises(InputError, match="UNDERHOOD_MAX_PIXELS: expected a positive int"):
        underhood.load_image(tmp_path / "s.png")


def test_a_file_that_is_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot read .* as an image") as info:
        underhood.load_image(tmp_path / "notes.png")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- model outputs

KINDS = ["tuple", "dict", "object"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_attribution_method_reads_the_logits(kind):
    from underhood.attribution.evaluate import method_options
    from underhood.attribution.registry import REGISTRY

    model, reference, x = Heads(kind), Heads("tensor"), images()
    small = {"smoothgrad": {"n_samples": 3}, "integrated_gradients": {"steps": 3}, "lime": {"n_samples": 8},
             "scorecam": {"batch_size": 8}, "occlusion": {"window": 8, "stride": 8}}
    options = method_options(model, list(REGISTRY), overrides=small)
    for name, entry in REGISTRY.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # LIME on 8 samples may warn about its fit
            got = entry.fn(model, x, **options[name])
            want = entry.fn(reference, x, **options[name])
        assert torch.allclose(got, want, atol=1e-5), name
    assert set(underhood.attribution.explain(model, x, ["saliency", "gradcam"])) == {"saliency", "gradcam"}
    data = underhood.ImageSet(x, torch.tensor([0, 1]), list("abcd"), masks=x[:, :1] > 0.5)
    evaluate = underhood.attribution.evaluate.evaluate
    scores = [evaluate(m, data, ["saliency", "gradcam"], n=2, steps=2).values for m in (model, reference)]
    assert scores[0]["saliency"] == scores[1]["saliency"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_attack_reads_the_logits(kind):
    from underhood.adversarial.registry import REGISTRY

    model, x = Heads(kind), images(3)
    per_image = {"gradient_ascent": {"steps": 2}, "fgsm": {}, "pgd": {"steps": 2}, "noise": {},
                 "deepfool": {"steps": 2}, "cw": {"steps": 2, "search_steps": 1},
                 "lbfgs": {"steps": 2, "search_steps": 1},
                 "one_pixel": {"population": 4, "iterations": 1}}
    for name, options in per_image.items():
        r = REGISTRY[name].fn(model, x, **options)
        assert r.adversarial.shape == x.shape, name
    assert underhood.adversarial.universal(model, x, passes=1, deepfool_steps=1).perturbation.shape[-3:] == x.shape[1:]
    assert underhood.adversarial.patch(model, x, target=0, steps=1, batch_size=3) is not None
    assert underhood.adversarial.substitute(model, x, rounds=1, epochs=1) is not None
    assert underhood.adversarial.fooling_images(model, [0], steps=1, population=4).adversarial.shape[1:] == (3, 16, 16)
    assert set(per_image) | {"universal", "patch", "substitute", "fooling_images"} == set(REGISTRY)


@pytest.mark.parametrize("kind", KINDS)
def test_activations_synthesis_and_accuracy_read_the_logits(kind):
    from underhood.core.batching import logits
    from underhood.models.training import accuracy
    from underhood.synthesis import objectives as O

    model, reference, x = Heads(kind), Heads("tensor"), images(6)
    assert underhood.activations.maps(model, x, "features.1")["features.1"].shape == (6, 6, 16, 16)
    tp = underhood.activations.top_patches(model, x, "features.3", k=2)
    assert tp.index.shape[:2] == (8, 2)
    data = underhood.ImageSet(x, torch.tensor([0, 1, 2, 3, 0, 1]), list("abcd"))
    e = underhood.activations.embed(model, data, ["features.3"], method="pca", k=3)
    assert e.coords["features.3"].shape == (6, 2)
    r = underhood.synthesis.render(model, O.class_logit(1), steps=2, size=16)
    assert r.images.shape == (1, 3, 16, 16)
    assert torch.allclose(logits(model, x, 4), logits(reference, x, 4))
    assert accuracy(model, data) == accuracy(reference, data)


@pytest.mark.parametrize("kind", KINDS)
def test_output_chooses_another_head(kind):
    net, x = Heads(kind), images()
    with torch.no_grad():
        h = net.pool(net.features(x)).flatten(1)
        main, aux = net.fc(h), net.aux(h)
    default = underhood.load_model(net, device="cpu")
    assert torch.allclose(default(x), main)
    by_key = underhood.load_model(net, device="cpu", output="aux" if kind != "tuple" else 1)
    assert torch.allclose(by_key(x), aux)
    picked = underhood.load_model(net, device="cpu", output=lambda out: out[1] if kind == "tuple"
                                  else out["aux"] if kind == "dict" else out.aux)
    assert torch.allclose(picked(x), aux)
    assert underhood.attribution.saliency(by_key, x, target=1).shape == x.shape  # 2 classes now
    with pytest.raises(InputError, match="target: class 3 is out of range for a model with 2 outputs"):
        underhood.attribution.saliency(by_key, x, target=3)
    with pytest.raises(InputError, match="output: 'nothing' gives NoneType, not a tensor"):
        underhood.load_model(net, device="cpu", output="nothing")(x)
    with pytest.raises(InputError, match="output: expected None, an int index"):
        underhood.load_model(net, device="cpu", output=2.5)
    assert net.kind == kind and not net._forward_hooks  # the user's network is untouched


def test_tuple_output_of_the_root_is_read_only_inside_a_call():
    model = Heads("tuple")
    underhood.attribution.saliency(model, images())
    assert isinstance(model(images()), tuple)  # no hook survives the call


# ---------------------------------------------------------------------------- messages and warnings


def test_a_float_target_is_named_as_such():
    model, x = Heads(), images(4)
    for method in ("saliency", "gradcam", "occlusion", "integrated_gradients"):
        with pytest.raises(InputError, match=r"target: a class target must be an int class index .*got 2\.5"):
            underhood.attribution.registry.get(method)(model, x, target=2.5)
    with pytest.raises(InputError, match="must be an int class index"):
        underhood.attribution.saliency(model, x, target=torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert underhood.attribution.saliency(model, x, target=np.int64(2)).shape == x.shape


def test_an_image_given_as_weights(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(ModelError, match="'.*x.png' is an image, not a model weights file") as info:
        underhood.load_model(str(tmp_path / "x.png"))
    assert "pickled" not in str(info.value)
    (tmp_path / "junk.pt").write_text("hello")
    with pytest.raises(ModelError, match="not a PyTorch checkpoint, TorchScript or .safetensors file"):
        underhood.load_model(str(tmp_path / "junk.pt"))


def test_safetensors_without_metadata_or_with_foreign_keys(tmp_path):
    from safetensors.torch import save_file

    save_file({"conv1.weight": torch.zeros(2, 3)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ModelError, match=r"holds 1 tensors \(conv1.weight\) but no underhood metadata.*"
                                         r"load_model\(net\)") as info:
        underhood.load_model(str(tmp_path / "bare.safetensors"))
    assert "None" not in str(info.value)
    save_file({"conv1.weight": torch.zeros(2, 3)}, str(tmp_path / "foreign.safetensors"),
              metadata={"underhood": json.dumps({"arch": "shapes"})})
    with pytest.raises(ModelError, match=r"do not fit architecture 'shapes': \d+ missing \(features.0.weight.*"
                                         r"1 unexpected \(conv1.weight\)"):
        underhood.load_model(str(tmp_path / "foreign.safetensors"))


def test_lime_warns_when_an_image_is_one_superpixel():
    model, x = Heads(), torch.full((1, 3, 16, 16), 0.4)
    segments = torch.zeros(16, 16, dtype=torch.long)
    with pytest.warns(UserWarning, match="single superpixel, so its map is all zero; give segments"):
        maps = underhood.attribution.lime(model, x, n_samples=8, segments=segments)
    assert maps.abs().sum() == 0
    with pytest.warns(UserWarning, match=r"raise n_segments \(now 1\) or compactness"):
        underhood.attribution.lime(model, x, n_samples=8, n_segments=1)


def test_knn_accuracy_warns_when_k_covers_every_point():
    from underhood.activations.embed import knn_accuracy

    points, labels = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 0, 1, 1, 1])
    with pytest.warns(UserWarning, match="k: 10 neighbours asked of 5 points; using k = 4"):
        clipped = knn_accuracy(points, labels, k=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert clipped == knn_accuracy(points, labels, k=4)
    with pytest.warns(UserWarning, match="NaN"):
        assert np.isnan(knn_accuracy(points[:1], labels[:1], k=3))
    feats = {"f": torch.randn(5, 3, generator=torch.Generator().manual_seed(1))}
    with pytest.warns(UserWarning, match="using k = 4"):
        underhood.activations.embed_features(feats, "pca", labels=labels, k=10)


def test_load_model_takes_classes_input_size_and_normalisation():
    """load_model(module, classes=, input_size=, mean=, std=): the normalisation becomes part of the model,
    the user's module is untouched, bad values are one-line InputErrors."""
    import pytest
    import torch
    from torch import nn

    from underhood.core.errors import InputError
    from underhood.models import load_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model = load_model(net, device="cpu", classes=["cat", "dog"], input_size=(3, 32, 32), mean=mean, std=std)
    x = torch.rand(2, 3, 32, 32)
    expected = net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(model(x), expected)
    assert model.classes == ["cat", "dog"] and model.input_size == (3, 32, 32)
    assert not hasattr(net, "classes")
    for kwargs, name in (({"classes": "cat"}, "classes"), ({"input_size": (32, 32)}, "input_size"),
                         ({"std": (0.2, 0.0, 0.2)}, "std"), ({"mean": (float("nan"),) * 3}, "mean")):
        with pytest.raises(InputError, match=f"^{name}:"):
            load_model(net, device="cpu", **kwargs)
