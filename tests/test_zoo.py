"""Model zoos offline: ``load_model("torchvision:NAME" | "timm:NAME", weights=PATH | None)`` and ``--weights``.

torchvision and timm do not import on the development machines (their wheels do not match the CPU torch),
so most tests install small fake ``torchvision.models`` / ``timm`` modules that behave as the real ones do
offline (the pretrained path raises the library's download error). The last tests use the real packages
where they import (the GPU machine).
"""

from __future__ import annotations

import functools
import sys
import types
import urllib.error

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import underhood
from underhood.cli import main
from underhood.core.errors import InputError, ModelError
from underhood.models import PRETRAINED, read_state


def tinynet(num_classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


def trained_state(seed: int = 7) -> dict[str, torch.Tensor]:
    """A state dict that no fresh build gives (its own seed), cloned so it is not shared with a network."""
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in tinynet().state_dict().items()}


class _Weights:  # an entry of a torchvision weights enum: a table in the package (no download)
    meta = {"categories": ["tench", "goldfish", "great white shark"]}
    transforms = functools.partial(dict, crop_size=160, resize_size=176)


@pytest.fixture
def fake_torchvision(monkeypatch):
    """``torchvision.models`` whose pretrained path fails as it does offline; records the weights asked for."""
    calls = []

    def get_model_weights(name):
        if name != "tinynet":
            raise ValueError(f"Unknown model {name}")
        return types.SimpleNamespace(DEFAULT=_Weights())

    def get_model(name, weights=None):
        calls.append(weights)
        if name != "tinynet":
            raise ValueError(f"Unknown model {name}")
        net = tinynet()
        if weights is not None:  # torch.hub.load_state_dict_from_url without a network
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return net

    tv = types.ModuleType("torchvision")
    tv_models = types.ModuleType("torchvision.models")
    tv_models.get_model, tv_models.get_model_weights = get_model, get_model_weights
    tv.models = tv_models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv_models)
    return calls


class LocalEntryNotFoundError(FileNotFoundError, ValueError):
    """What huggingface_hub raises offline when the file is not in its cache (an OSError and a ValueError)."""


LocalEntryNotFoundError.__module__ = "huggingface_hub.errors"


@pytest.fixture
def fake_timm(monkeypatch):
    calls = []

    def create_model(name, pretrained=False):
        calls.append(pretrained)
        if name != "tiny":
            raise RuntimeError(f"Unknown model ({name})")
        net = tinynet()
        net.pretrained_cfg = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.2, 0.2), "input_size": (3, 96, 96)}
        net.num_classes = 3
        if pretrained:
            raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache")
        return net

    class ImageNetInfo:
        def __init__(self, subset):
            self.subset = subset

        def index_to_description(self, i):
            return f"{self.subset}-{i}"

    timm = types.ModuleType("timm")
    timm.create_model = create_model
    timm.is_model = lambda name: name == "tiny"
    data = types.ModuleType("timm.data")
    data.ImageNetInfo = ImageNetInfo
    data.infer_imagenet_subset = lambda net: "table" if net.num_classes == 3 else None
    timm.data = data
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", data)
    return calls


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.net.state_dict().items()}


def _assert_holds(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = _params(model)
    assert own.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(own[k].cpu(), v), k


# ----------------------------------------------------------------------------- torchvision


def test_torchvision_untrained_keeps_classes_and_preprocessing(fake_torchvision):
    model = underhood.load_model("torchvision:tinynet", weights=None, device="cpu")
    assert fake_torchvision == [None]  # no download asked for
    assert model.classes == ["tench", "goldfish", "great white shark"]
    assert model.input_size == (3, 160, 160)  # the weights' crop size
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert model.meta["weights"] == "none" and not model.training
    assert model(torch.rand(2, 3, 40, 40)).shape == (2, 3)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_torchvision_weights_file_loads_exactly_the_saved_tensors(fake_torchvision, tmp_path, suffix):
    state = trained_state()
    path = tmp_path / f"tiny{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model = underhood.load_model("torchvision:tinynet", weights=str(path), device="cpu")
    assert fake_torchvision == [None]
    _assert_holds(model, state)
    assert model.meta["weights"] == str(path) and model.classes[0] == "tench"


def test_torchvision_offline_default_is_one_line_naming_weights(fake_torchvision):
    with pytest.raises(ModelError) as info:
        underhood.load_model("torchvision:tinynet", device="cpu")
    assert str(info.value) == ("spec: torchvision could not fetch the pretrained weights for tinynet (offline?); pass "
                               "weights=PATH to a local state dict (CLI: --weights PATH) or weights=None for an "
                               "untrained model")
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    assert len(fake_torchvision) == 1 and isinstance(fake_torchvision[0], _Weights)  # the pretrained ones


def test_torchvision_unknown_name(fake_torchvision):
    with pytest.raises(ModelError, match="torchvision has no model 'nosuch'"):
        underhood.load_model("torchvision:nosuch", weights=None, device="cpu")
    with pytest.raises(ModelError, match="torchvision has no model 'nosuch' with pretrained weights"):
        underhood.load_model("torchvision:nosuch", device="cpu")


def test_mismatched_keys_are_one_line_with_counts_and_names(fake_torchvision, tmp_path):
    state = trained_state()
    state["extra.weight"] = state.pop("4.bias")
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ModelError, match=r"^weights: the weights in '.*w.pt' do not fit torchvision's tinynet: "
                                         r"1 missing \(4.bias\); 1 unexpected \(extra.weight\)") as info:
        underhood.load_model("torchvision:tinynet", weights=tmp_path / "w.pt", device="cpu")
    assert "\n" not in str(info.value)
    state = trained_state()
    state["4.weight"] = torch.zeros(5, 4)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(ModelError, match=r"1 of another shape \(4.weight\)"):
        underhood.load_model("torchvision:tinynet", weights=tmp_path / "shape.pt", device="cpu")


def test_checkpoint_dict_and_module_prefix(fake_torchvision, tmp_path):
    state = trained_state()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pt")
    _assert_holds(underhood.load_model("torchvision:tinynet", weights=tmp_path / "ddp.pt", device="cpu"), state)
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in state.items()}}, tmp_path / "compiled.pt")
    _assert_holds(underhood.load_model("torchvision:tinynet", weights=tmp_path / "compiled.pt", device="cpu"), state)


class Optimiser:  # a Python object in a checkpoint: weights_only refuses it
    def __init__(self):
        self.lr = 0.1


def test_pickled_objects_need_trust(fake_torchvision, tmp_path):
    state = trained_state()
    torch.save({"state_dict": state, "optimizer": Optimiser()}, tmp_path / "ckpt.pt")
    with pytest.raises(ModelError, match=r"^weights: .*ckpt.pt' holds pickled Python objects.*trust=True "
                                         r"\(CLI: --trust\)"):
        underhood.load_model("torchvision:tinynet", weights=tmp_path / "ckpt.pt", device="cpu")
    model = underhood.load_model("torchvision:tinynet", weights=tmp_path / "ckpt.pt", trust=True, device="cpu")
    _assert_holds(model, state)


def test_bad_weights_files(fake_torchvision, tmp_path):
    with pytest.raises(ModelError, match=r"^weights: no file named .*nothing.pt.*--weights none"):
        underhood.load_model("torchvision:tinynet", weights=tmp_path / "nothing.pt", device="cpu")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ModelError, match=r"^weights: cannot load .*junk.pt' as a state dict"):
        underhood.load_model("torchvision:tinynet", weights=tmp_path / "junk.pt", device="cpu")
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "empty.pt")
    with pytest.raises(ModelError, match=r"is not a state dict of tensors \(it holds epoch, note\)"):
        underhood.load_model("torchvision:tinynet", weights=tmp_path / "empty.pt", device="cpu")
    with pytest.raises(InputError, match="^weights: expected 'pretrained', a path"):
        underhood.load_model("torchvision:tinynet", weights=3, device="cpu")


# ----------------------------------------------------------------------------- timm


def test_timm_untrained_path_and_offline(fake_timm, tmp_path):
    model = underhood.load_model("timm:tiny", weights=None, device="cpu")
    assert fake_timm == [False]
    assert model.input_size == (3, 96, 96) and model.classes == ["table-0", "table-1", "table-2"]
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.5, 0.4, 0.3]))
    state = trained_state(3)
    save_file(state, str(tmp_path / "tiny.safetensors"))
    _assert_holds(underhood.load_model("timm:tiny", weights=tmp_path / "tiny.safetensors", device="cpu"), state)
    with pytest.raises(ModelError) as info:
        underhood.load_model("timm:tiny", device="cpu")
    assert str(info.value) == ("spec: timm could not fetch the pretrained weights for tiny (offline?); pass "
                               "weights=PATH to a local state dict (CLI: --weights PATH) or weights=None for an "
                               "untrained model")
    with pytest.raises(ModelError, match="timm has no model 'nosuch'"):
        underhood.load_model("timm:nosuch", weights=None, device="cpu")


# ----------------------------------------------------------------------------- other specs


def test_builtin_untrained_and_own_state_dict(tmp_path):
    shipped = underhood.load_model("shapes", device="cpu")
    fresh = underhood.load_model("shapes", weights=None, device="cpu")
    assert fresh.classes == shipped.classes and fresh.input_size == shipped.input_size
    assert "test_accuracy" not in fresh.meta and fresh.meta["weights"] == "none"
    assert not torch.equal(fresh.net.features[0].weight, shipped.net.features[0].weight)
    # an underhood model's own state_dict() (net.* keys beside mean and std) loads back
    torch.save(shipped.state_dict(), tmp_path / "own.pt")
    again = underhood.load_model("shapes", weights=tmp_path / "own.pt", device="cpu")
    _assert_holds(again, shipped.net.state_dict())


def test_factory_takes_a_state_dict_but_not_none(tmp_path, monkeypatch):
    module = types.ModuleType("zoo_factory")
    module.build = tinynet
    monkeypatch.setitem(sys.modules, "zoo_factory", module)
    state = trained_state(5)
    save_file(state, str(tmp_path / "f.safetensors"))
    _assert_holds(underhood.load_model("zoo_factory:build", weights=tmp_path / "f.safetensors", device="cpu"), state)
    with pytest.raises(ModelError, match=r"^weights: None \(an untrained architecture\).*'zoo_factory:build' builds"):
        underhood.load_model("zoo_factory:build", weights=None, device="cpu")
    with pytest.raises(InputError, match=r"^weights: only for a spec that names an architecture"):
        underhood.load_model(tinynet(), weights=None, device="cpu")
    assert PRETRAINED == "pretrained"


def test_read_state_returns_the_tensors(tmp_path):
    state = trained_state()
    torch.save({"model_state_dict": state}, tmp_path / "t.pt")
    got = read_state(tmp_path / "t.pt")
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


# ----------------------------------------------------------------------------- command line


def test_cli_weights_option(fake_torchvision, tmp_path, capsys):
    assert main(["layers", "--model", "torchvision:tinynet", "--weights", "none", "--out", str(tmp_path / "a")]) == 0
    assert "Linear" in (tmp_path / "a" / "layers.txt").read_text()
    state = trained_state()
    save_file(state, str(tmp_path / "w.safetensors"))
    assert main(["layers", "torchvision:tinynet", "--weights", str(tmp_path / "w.safetensors"),
                 "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main(["layers", "--model", "torchvision:tinynet", "--out", str(tmp_path / "c")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--weights PATH" in err and "(offline?)" in err
    assert main(["layers", "shapes", "--model", "digits"]) != 0
    assert "given twice" in capsys.readouterr().err


def test_every_model_command_has_weights():
    from underhood.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    checked = 0
    for name, p in sub.choices.items():
        options = {o for a in p._actions for o in a.option_strings}
        # robustness takes several comma-separated models (one curve each): one --weights would not say whose
        if ("--model" in options or name == "layers") and name != "robustness":
            assert "--weights" in options, name
            checked += 1
    assert checked >= 10


# ----------------------------------------------------------------------------- the real packages (GPU machine)


def test_real_torchvision_resnet18_untrained_and_round_trip(tmp_path):
    pytest.importorskip("torchvision")
    model = underhood.load_model("torchvision:resnet18", weights=None, device="cpu")
    assert len(model.classes) == 1000 and model.classes[0] == "tench" and model.input_size == (3, 224, 224)
    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    again = underhood.load_model("torchvision:resnet18", weights=tmp_path / "r18.safetensors", device="cpu")
    _assert_holds(again, model.net.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_real_torchvision_offline_default(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ModelError, match=r"^spec: torchvision could not fetch the pretrained weights for resnet18 "
                                         r"\(offline\?\)"):
        underhood.load_model("torchvision:resnet18", device="cpu")


def test_real_timm_untrained_and_round_trip(tmp_path):
    pytest.importorskip("timm")
    model = underhood.load_model("timm:resnet18", weights=None, device="cpu")
    assert len(model.classes) == model.net.num_classes and model.input_size[0] == 3
    torch.save(model.net.state_dict(), tmp_path / "r18.pt")
    again = underhood.load_model("timm:resnet18", weights=tmp_path / "r18.pt", device="cpu")
    _assert_holds(again, model.net.state_dict())
