"""Frozen against fine-tuned, per layer, on a user's model: the frozen row is the linear probe, the random row the
probe of the random copy, the fine-tuned head starts exactly where the probe ended, and the model is untouched."""

from __future__ import annotations

import pytest
import torch

from underhood.core.errors import InputError
from underhood.data import digits, shapes
from underhood.data.imageset import ImageSet
from underhood.models import load_model
from underhood.transfer import FinetuneResult, finetune_curve, probe

from .transformer_models import build


def _parity(data: ImageSet) -> ImageSet:
    """A new task for the digits model: even against odd."""
    return ImageSet(data.images, data.labels % 2, ["even", "odd"])


@pytest.fixture(scope="module")
def task():
    train, test = digits(split="train"), digits(split="test")
    return _parity(train[:300]), _parity(test[:300])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, model.training, \
        [(m._forward_hooks, m._forward_pre_hooks, m._backward_hooks) for m in model.modules()]


def test_frozen_and_random_rows_are_the_probes_and_the_model_is_untouched(task):
    model = load_model("digits")
    model.train()  # a mode to keep
    before, mode, _ = _state(model)
    r = finetune_curve(model, *task, epochs=1, seeds=2)
    assert isinstance(r, FinetuneResult) and r.layers == ["pool1", "pool2", "fc2"]
    p = probe(model, *task, layers=r.layers, baselines=("random",), seed=0)
    for n in r.layers:
        assert r.values("frozen", n) == [pytest.approx(p.accuracy[n], abs=1e-9)]
        assert r.values("random", n) == [pytest.approx(p.random[n], abs=1e-9)]
        assert len(r.values("finetuned", n)) == 2 and all(0 <= v <= 1 for v in r.values("finetuned", n))
    after, mode_after, _ = _state(model)
    assert mode_after == mode is True
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not (f or p_ or b) for f, p_, b in (hooks for hooks in _state(model)[2]))
    assert r.statements() and r.curve("frozen")["pool2"][0] == r.values("frozen", "pool2")[0]


def test_the_fine_tuned_head_starts_where_the_probe_ended(task):
    """With a learning rate of ~0 (and no BatchNorm to update), fine-tuning is the probe: the head converted to
    unstandardised features makes the same predictions."""
    model = load_model("digits")
    r = finetune_curve(model, *task, layers=["pool2", "fc1"], epochs=1, lr=1e-30, treatments=("frozen", "finetuned"))
    for n in ("pool2", "fc1"):
        assert r.values("finetuned", n)[0] == pytest.approx(r.values("frozen", n)[0], abs=1e-6)


def test_works_on_a_vit_and_leaves_no_hook():
    vit = build("vit")
    data = shapes(160, size=32, seed=3)
    task = ImageSet(data.images, data.labels % 4, ["a", "b", "c", "d"])
    r = finetune_curve(vit, task[:96], task[96:], epochs=1, treatments=("frozen", "finetuned"))
    assert r.layers and all(0 <= row["accuracy"] <= 1 for row in r.runs)
    assert not any(m._forward_hooks for m in vit.modules())


def test_errors(task):
    model = load_model("digits")
    with pytest.raises(InputError, match="treatments"):
        finetune_curve(model, *task, treatments=("thawed",))
    with pytest.raises(InputError, match="epochs"):
        finetune_curve(model, *task, epochs=0)
    with pytest.raises(InputError, match="layer"):
        finetune_curve(model, *task, layers=["nope"])
    with pytest.raises(InputError, match="lr"):
        finetune_curve(model, *task, lr=0.0)
