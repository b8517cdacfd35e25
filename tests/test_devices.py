"""Devices: ``resolve_device`` refuses what the machine lacks; every family entry point refuses a model on the
meta device (or split over devices) and inputs on meta in one line; CPU inputs meet a GPU model on its device;
the process group's backend and each rank's device (checked on the CPU by faking what torch.cuda reports)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import underhood
from underhood import activations as act
from underhood import adversarial as adv
from underhood import attribution as A
from underhood import synthesis as S
from underhood.core import distributed
from underhood.core.device import home_device, resolve_device
from underhood.core.errors import InputError
from underhood.core.inputs import check_inputs

META = "model: its parameters are on meta"


def _gpus(monkeypatch, count: int) -> None:
    """Make torch.cuda report ``count`` devices (0: no CUDA); only resolve_device and the backend logic read it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


# ----------------------------------------------------------------------------- resolve_device


def test_an_index_beyond_the_machines_gpus_is_one_line(monkeypatch):
    _gpus(monkeypatch, 1)
    with pytest.raises(InputError) as err:
        resolve_device("cuda:7")
    line = str(err.value)
    assert line.startswith("device: 'cuda:7' asked for but this machine has 1 CUDA device (cuda:0);")
    assert "\n" not in line
    assert resolve_device("cuda:0") == torch.device("cuda:0") and resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("auto") == torch.device("cuda")
    _gpus(monkeypatch, 2)
    assert "has 2 CUDA devices (cuda:0, cuda:1)" in str(pytest.raises(InputError, resolve_device, "cuda:2").value)
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda:1")


def test_without_cuda_the_existing_message_and_auto_is_the_cpu(monkeypatch):
    _gpus(monkeypatch, 0)
    with pytest.raises(InputError, match="device: 'cuda:7' asked for but CUDA is not available here"):
        resolve_device("cuda:7")
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    with pytest.raises(InputError, match="cannot parse 'gpu'"):
        resolve_device("gpu")


# ----------------------------------------------------------------------------- the device-mismatch guard


@pytest.fixture(scope="module")
def meta_model():
    return underhood.load_model("shapes", device="cpu").to("meta")


@pytest.fixture(scope="module")
def data():
    return underhood.datasets.shapes(4, seed=1)


ENTRY_POINTS = {
    "saliency": lambda m, d: A.saliency(m, d.images[:2]),
    "integrated_gradients": lambda m, d: A.integrated_gradients(m, d.images[:2], steps=2),
    "gradcam": lambda m, d: A.gradcam(m, d.images[:2]),
    "occlusion": lambda m, d: A.occlusion(m, d.images[:2], window=16, stride=16),
    "explain": lambda m, d: A.explain(m, d.images[:2], ["saliency", "gradcam"]),
    "pgd": lambda m, d: adv.pgd(m, d.images[:2], eps=4 / 255, steps=1),
    "fgsm": lambda m, d: adv.fgsm(m, d.images[:2], eps=4 / 255),
    "robustness_curve": lambda m, d: adv.robustness_curve(m, d, "pgd", [0, 4 / 255], steps=1),
    "fooling_images": lambda m, d: adv.fooling_images(m, 0, n=1, method="gradient", steps=1),
    "render": lambda m, d: S.render(m, S.channel("features.9", 0), steps=1),
    "deep_dream": lambda m, d: S.deep_dream(m, d.images[:1], "features.6", steps=1, octaves=1),
    "invert": lambda m, d: S.invert(m, d.images[:1], "features.6", steps=1, seeds=(0,)),
    "style_transfer": lambda m, d: S.style_transfer(m, d.images[:1], d.images[1:2], steps=1),
    "maps": lambda m, d: act.maps(m, d.images[:1], ["features.9"]),
    "top_patches": lambda m, d: act.top_patches(m, d, "features.9", k=2),
    "statistics": lambda m, d: act.statistics(m, d, "features.9"),
    "embed": lambda m, d: act.embed(m, d, ["features.9"], method="pca"),
    "ablate": lambda m, d: act.ablate(m, d, "features.16", units=[0, 1]),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_a_meta_model_is_one_clear_line_at_every_entry_point(name, meta_model, data):
    with pytest.raises(InputError) as err:
        ENTRY_POINTS[name](meta_model, data)
    assert str(err.value).startswith(META) and "model.to(" in str(err.value) and "\n" not in str(err.value)


def test_inputs_on_meta_are_one_clear_line(shapes_model, data):
    for call in (lambda: A.saliency(shapes_model, data.images[:2].to("meta")),
                 lambda: adv.pgd(shapes_model, data.images[:2].to("meta"), eps=4 / 255, steps=1),
                 lambda: act.statistics(shapes_model, data.images.to("meta"), "features.9")):
        with pytest.raises(InputError, match="on the meta device .*give real pixels"):
            call()


def test_a_model_split_over_devices_is_one_line():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    assert home_device(net) == torch.device("cpu") and home_device(nn.ReLU()) == torch.device("cpu")
    net[2].to("meta")  # half on the CPU, half without weights
    with pytest.raises(InputError, match=META):
        check_inputs(net, torch.rand(1, 3, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_inputs_meet_a_gpu_model_on_its_device_and_a_split_model_is_refused(data):
    model = underhood.load_model("shapes", device="cuda")
    x = data.images[:2]
    out = A.saliency(model, x)
    assert out.device.type == "cuda" and x.device.type == "cpu"
    torch.testing.assert_close(out.cpu(), A.saliency(underhood.load_model("shapes", device="cpu"), x),
                               atol=1e-4, rtol=1e-3)  # TF32 convolutions on the GPU round to 10 bits
    model.net.classifier.cpu()
    with pytest.raises(InputError, match="split over cpu, cuda:0"):
        A.saliency(model, x)


def test_check_inputs_moves_inputs_to_the_models_device_and_leaves_them_alone(shapes_model, data):
    x = data.images[:2].double()
    y = check_inputs(shapes_model, x)
    assert y.dtype == torch.float32 and y.device == next(shapes_model.parameters()).device
    assert x.dtype == torch.float64  # a copy: the caller's tensor is untouched


# ----------------------------------------------------------------------------- the process group and each rank


def test_gloo_unless_each_local_rank_has_a_gpu_of_its_own(monkeypatch):
    bound = []
    monkeypatch.setattr(torch.cuda, "set_device", bound.append)
    _gpus(monkeypatch, 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.backend("cuda") == "gloo" and distributed.backend("cpu") == "gloo"
    assert distributed.backend(None) == "gloo" and bound == []
    assert distributed.rank_device(torch.device("cuda")) == torch.device("cuda:0")  # both ranks share the GPU
    _gpus(monkeypatch, 2)
    assert distributed.backend("cuda") == "nccl" and bound == [1]
    assert distributed.rank_device(torch.device("cuda")) == torch.device("cuda:1")
    assert distributed.rank_device(torch.device("cuda:0")) == torch.device("cuda:0")  # an explicit index wins
    assert distributed.rank_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert distributed.rank_device(torch.device("cuda")) == torch.device("cuda")  # not under torchrun
