"""``train(checkpoint_every=N)``: weight snapshots over training, their index, and ``underhood train`` with them.

A tiny digits run (LeNet, 2 epochs of the 1,437 training images at batch 256: 6 steps an epoch) with a
snapshot every epoch. Oracles: a loaded snapshot gives exactly the logits the in-memory model gave when
the snapshot was taken; the same seed without snapshots gives the same weights and history.
"""

from __future__ import annotations

import json

import pytest
import torch

from underhood.cli import main
from underhood.core.errors import InputError
from underhood.core.results import load
from underhood.models.checkpoints import INDEX, Checkpoint, load_checkpoints
from underhood.models.loading import load_model
from underhood.models.training import train
from underhood.transfer import ProbeHistory, history

RUN = {"data": "digits", "epochs": 2, "batch_size": 256, "progress": False, "seed": 3}
STEPS_PER_EPOCH = 6  # ceil(1437 / 256)


@pytest.fixture(scope="module")
def probe_input():
    return torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def run(tmp_path_factory, probe_input):
    """The run with snapshots; ``seen``: what the callback saw at each snapshot (mode, logits)."""
    out = tmp_path_factory.mktemp("run") / "lenet.safetensors"
    seen = []

    def record(model, checkpoint):
        with torch.no_grad():
            seen.append({"checkpoint": checkpoint, "training": model.training, "logits": model(probe_input)})
        return {"note": f"seen at epoch {checkpoint.epoch}"}

    result = train("digits", **RUN, out=out, checkpoint_every=1, on_checkpoint=record)
    return result, out.with_name("lenet-checkpoints"), seen


def test_snapshots_at_epoch_0_every_epoch_and_the_last(run):
    result, folder, seen = run
    assert sorted(p.name for p in folder.iterdir()) == [INDEX, "epoch-000.safetensors", "epoch-001.safetensors",
                                                         "epoch-002.safetensors"]
    cps = load_checkpoints(folder)
    assert [c.epoch for c in cps] == [0, 1, 2]
    assert [c.step for c in cps] == [0, STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert [c.last for c in cps] == [False, False, True]
    assert set(cps[0].metrics) == {"test_accuracy", "train_accuracy"}  # the initialisation: no training loss yet
    for c, entry in zip(cps[1:], result.history):
        assert c.metrics == {k: v for k, v in entry.items() if k != "epoch"}
    assert cps[-1].metrics["test_accuracy"] == result.accuracy
    assert [c.info for c in cps] == [{"note": f"seen at epoch {e}"} for e in (0, 1, 2)]  # what the callback returned
    index = json.loads((folder / INDEX).read_text())
    assert index["complete"] and index["checkpoint_every"] == 1 and index["arch"] == "digits"


def test_the_callback_sees_each_snapshot_in_eval_mode(run):
    result, _, seen = run
    assert [s["checkpoint"].epoch for s in seen] == [0, 1, 2]
    assert all(isinstance(s["checkpoint"], Checkpoint) and not s["training"] for s in seen)
    assert not result.model.training  # the trained model comes back in eval mode, as before


def test_a_loaded_snapshot_gives_the_logits_the_model_gave_then(run, probe_input):
    result, folder, seen = run
    for s in seen:
        model = s["checkpoint"].load()
        with torch.no_grad():
            assert torch.equal(model(probe_input), s["logits"]), s["checkpoint"].epoch
    last = load_checkpoints(folder)[-1].load()
    final = load_model(str(result.path))
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), final.state_dict().values()))
    assert not torch.equal(seen[0]["logits"], seen[-1]["logits"])  # training moved the weights


def test_snapshot_metadata_has_the_run_the_step_and_the_metrics(run):
    _, folder, _ = run
    for c in load_checkpoints(folder):
        meta = c.load().meta
        assert (meta["epoch"], meta["step"], meta["metrics"]) == (c.epoch, c.step, c.metrics)
        assert meta["test_accuracy"] == c.metrics["test_accuracy"]
        assert meta["arch"] == "digits" and meta["seed"] == RUN["seed"] and meta["epochs"] == RUN["epochs"]


def test_snapshots_do_not_change_the_training(run):
    result, _, _ = run
    plain = train("digits", **RUN)
    assert plain.history == result.history
    state, other = plain.model.state_dict(), result.model.state_dict()
    assert all(torch.equal(state[k], other[k]) for k in state)


def test_a_rerun_replaces_the_earlier_snapshots(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / INDEX).write_text(json.dumps({"checkpoints": [{"epoch": 9, "step": 1, "file": "epoch-009.safetensors"}]}))
    (folder / "epoch-009.safetensors").write_bytes(b"old")
    train("digits", **{**RUN, "epochs": 1}, checkpoint_every=1, checkpoints=folder)
    assert sorted(p.name for p in folder.iterdir()) == [INDEX, "epoch-000.safetensors", "epoch-001.safetensors"]
    assert [c.epoch for c in load_checkpoints(folder)] == [0, 1]


@pytest.mark.parametrize("kwargs, match", [
    ({"checkpoint_every": 0}, "checkpoint_every: expected a positive int"),
    ({"checkpoint_every": 1.5}, "checkpoint_every"),
    ({"checkpoints": "x"}, "checkpoints: only used with checkpoint_every"),
    ({"on_checkpoint": print}, "on_checkpoint: only used with checkpoint_every"),
    ({"checkpoint_every": 1, "on_checkpoint": 3, "checkpoints": "x"}, "on_checkpoint: expected a function"),
    ({"checkpoint_every": 1}, "checkpoints: give the folder"),
])
def test_bad_arguments_are_one_line_errors_before_any_work(kwargs, match):
    with pytest.raises(InputError, match=match) as e:
        train("digits", data="digits", progress=False, **kwargs)
    assert "\n" not in str(e.value)


def test_a_file_or_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        train("digits", data="digits", progress=False, checkpoint_every=1, checkpoints=tmp_path / "a-file")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not underhood checkpoints"):
        train("digits", data="digits", progress=False, checkpoint_every=1, checkpoints=tmp_path / "theirs")
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="checkpoints: .* holds no readable checkpoints.json"):
        load_checkpoints(tmp_path / "theirs")


# ----------------------------------------------------------------------------- the command


def _cli(argv, capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_command_keeps_snapshots_and_draws_the_probe_curves(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(history, "N_TRAIN", 120)  # small probe sets: the test is about the files
    monkeypatch.setattr(history, "N_TEST", 60)
    out = tmp_path / "run" / "digits.safetensors"
    rc, text, err = _cli(["train", "--arch", "digits", "--data", "digits", "--epochs", "2", "--batch-size", "512",
                          "--checkpoint-every", "1", "--probe-every", "2", "--no-progress", "--out", str(out)], capsys)
    assert rc == 0, err
    folder = tmp_path / "run" / "digits-checkpoints"
    assert [c.epoch for c in load_checkpoints(folder)] == [0, 1, 2]
    assert [("probe" in c.info) for c in load_checkpoints(folder)] == [True, False, True]  # every 2nd epoch and 0
    saved = folder / "probe-history"
    assert {"probe-history.png", "probe-history.json", "manifest.json"} <= {p.name for p in saved.iterdir()}
    back = load(saved)
    assert isinstance(back, ProbeHistory) and back.epochs == [0, 2] and back.n_train == 120 and back.n_test == 60
    table = json.loads((saved / "probe-history.json").read_text())
    assert [e["epoch"] for e in table["epochs"]] == [0, 2] and table["layers"] == back.layers
    assert str(folder) in text and str(saved) in text


@pytest.mark.parametrize("argv, match", [
    (["--checkpoint-every", "2", "--probe-every", "3"], "--probe-every: 3 is not a multiple of --checkpoint-every 2"),
    (["--probe-data", "shapes:100"], "--probe-data: only used with --probe-every"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
])
def test_bad_command_options_are_one_line(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _cli(["train", "--arch", "digits", "--data", "digits", *argv], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and match in err, err
    assert not list(tmp_path.iterdir())


def test_the_command_refuses_a_file_where_the_snapshots_go(tmp_path, capsys):
    (tmp_path / "m-checkpoints").write_text("x")
    rc, _, err = _cli(["train", "--arch", "digits", "--data", "digits", "--probe-every", "1",
                       "--out", str(tmp_path / "m.safetensors")], capsys)
    assert rc == 2 and "checkpoints:" in err and "is a file" in err and len(err.strip().splitlines()) == 1, err
