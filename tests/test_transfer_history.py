"""Probe curves over training (``underhood.transfer.history``): one curve per snapshot, each the ``probe`` of it.

A tiny digits run (LeNet, 2 epochs, a snapshot every epoch) probed while it trains on small probe sets
(120 + 60 images). Oracle: every stored curve equals ``probe`` on the loaded snapshot; probing the folder
afterwards gives the same curves; the pixels baseline is fitted once, and no random copy is probed.
"""

from __future__ import annotations

import pytest
import torch

from underhood.core.errors import InputError
from underhood.core.results import load
from underhood.data import shapes, splits
from underhood.data.splits import training_data
from underhood.models.checkpoints import Checkpoint, load_checkpoints
from underhood.models.training import train
from underhood.transfer import ProbeHistory, history, probe, probe_callback, probe_history, probe_sets
from underhood.viz.render import save_figure


@pytest.fixture(scope="module")
def sets():
    return training_data("digits")[:120], splits.test_set("digits", 60)


@pytest.fixture(scope="module")
def run(tmp_path_factory, sets):
    folder = tmp_path_factory.mktemp("run") / "ckpt"
    callback = probe_callback(*sets)
    train("digits", data="digits", epochs=2, batch_size=256, progress=False, checkpoint_every=1, checkpoints=folder,
          on_checkpoint=callback)
    return callback.history, folder


def test_one_curve_per_snapshot_each_equal_to_probe_on_the_snapshot(run, sets):
    h, folder = run
    cps = load_checkpoints(folder)
    assert h.epochs == [c.epoch for c in cps] == [0, 1, 2]
    assert h.steps == {c.epoch: c.step for c in cps}
    for c in cps:
        oracle = probe(c.load(), *sets, baselines=("pixels",))
        assert list(h.curves[c.epoch]) == oracle.layers == h.layers
        assert dict(h.curves[c.epoch]) == {n: oracle.accuracy[n] for n in oracle.layers}
        assert h.model_accuracy[c.epoch] == oracle.model_accuracy
        assert h.pixels == oracle.pixels and h.chance == oracle.chance
        assert c.info["probe"]["accuracy"] == dict(h.curves[c.epoch])  # stored in the checkpoint index
    assert h.n_train == 120 and h.n_test == 60 and h.rf == oracle.rf


def test_probing_the_folder_afterwards_gives_the_same_curves(run, sets, monkeypatch):
    h, folder = run
    calls = []
    real = history.probe
    monkeypatch.setattr(history, "probe", lambda *a, **k: calls.append(k["baselines"]) or real(*a, **k))
    again = probe_history(folder, *sets, device="cpu")
    assert again.curves == h.curves and again.pixels == h.pixels and again.epochs == h.epochs
    assert calls == [("pixels",), (), ()]  # pixels once, never a random copy


def test_a_callback_probes_epoch_0_every_nth_epoch_and_the_last(run, sets):
    _, folder = run
    cps = load_checkpoints(folder)
    callback = probe_callback(*sets, every=2, layers=["fc2"])  # one layer: the schedule is the point
    model = cps[0].load()
    done = [callback(model, Checkpoint(e, e, {}, cps[0].path, last=e == 3)) is not None for e in range(4)]
    assert done == [True, False, True, True]  # 0, 2 and 3 (the last)
    assert callback.history.epochs == [0, 2, 3]
    with pytest.raises(InputError, match="epoch 2 is probed twice"):
        callback(model, Checkpoint(2, 2, {}, cps[0].path))


def test_save_and_load_and_the_key_figures(run, tmp_path):
    h, _ = run
    back = load(h.save(tmp_path / "history"))
    assert isinstance(back, ProbeHistory) and back.curves == h.curves and back.epochs == h.epochs
    assert back.steps == h.steps and back.layers == h.layers
    s = h.scalars()
    assert s["snapshots"] == 3 and s["first_epoch"] == 0 and s["last_epoch"] == 2
    assert s[f"last[{h.layers[-1]}]"] == h.curves[2][h.layers[-1]]
    assert h.summary().splitlines()[0] == "ProbeHistory"


def test_the_figure_has_one_line_per_epoch(run, tmp_path):
    h, _ = run
    fig = h.figure()
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["epoch 0 (initialisation)", "epoch 1", "epoch 2 (trained)"]
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == h.layers
    save_figure(fig, tmp_path / "history.png")
    many = ProbeHistory(list(range(12)), {e: {"a": 0.1 + 0.05 * e, "b": 0.2 + 0.06 * e} for e in range(12)},
                        pixels=0.3, chance=0.125, layers=["a", "b"], n_train=10, n_test=5)
    assert len(many.figure().axes) == 2  # more than ten epochs: a colour bar instead of a legend


def test_bad_inputs_are_one_line_errors(run, sets, tmp_path):
    _, folder = run
    for call, match in [
        (lambda: probe_callback(*sets, every=0), "every: expected a positive int"),
        (lambda: probe_callback(*sets, layers=["pixels"]), "layers: name at least one layer"),
        (lambda: probe_callback(*sets, pool="median"), "pool"),
        (lambda: probe_history([], *sets), "checkpoints: expected a checkpoint folder"),
        (lambda: probe_history(tmp_path / "none", *sets), "checkpoints: .* holds no readable"),
        (lambda: probe_callback(*sets)(torch.nn.Identity(), {"epoch": 0}), "checkpoint: expected"),
        (lambda: probe_sets("shapes", n_train=0), "n_train"),
    ]:
        with pytest.raises(InputError, match=match) as e:
            call()
        assert "\n" not in str(e.value)


def test_probe_sets_draw_images_no_training_epoch_uses():
    assert history.PROBE_SEED % 1000 == 999  # seed s, epoch e train on s * 1000 + e: only a 1000-epoch run gets there
    train_set, test = probe_sets("shapes", n_train=12, n_test=6)
    assert torch.equal(train_set.images, shapes(12, seed=history.PROBE_SEED).images)
    assert torch.equal(test.images, splits.test_set("shapes", 6).images)
