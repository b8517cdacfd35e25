"""models.training.TrainResult follows the one result protocol; a saved one keeps the model's weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from underhood.core.results import load
from underhood.models.normalized import Normalized
from underhood.models.training import TrainResult

from .conftest import check_protocol


def _result() -> TrainResult:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    model = Normalized(net, [0.5] * 3, [0.25] * 3, ["a", "b"], (3, 8, 8)).eval()
    history = [{"epoch": 1, "loss": 0.9, "test_accuracy": 0.6}, {"epoch": 2, "loss": 0.5, "test_accuracy": 0.75}]
    return TrainResult(model, 0.75, Path("weights/tiny.safetensors"), history)


def test_repr_summary_and_key_figures():
    r = _result()
    check_protocol(r)
    assert "<Normalized>" in repr(r)
    assert r.scalars() == {"accuracy": 0.75, "path": str(Path("weights/tiny.safetensors")), "epochs": 2,
                           "final_loss": 0.5}
    assert isinstance(r.summary(), str) and r.summary().splitlines()[0] == "TrainResult"


def test_save_and_load_keep_the_weights_and_the_history(tmp_path):
    r = _result()
    back = load(r.save(tmp_path / "run"))
    assert isinstance(back, TrainResult) and back.accuracy == 0.75 and back.history == r.history
    assert back.path == str(r.path)  # a path comes back as its string
    state = r.model.state_dict()
    assert set(back.model) == set(state) and all(torch.equal(back.model[k], state[k]) for k in state)
