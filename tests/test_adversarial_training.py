"""Adversarial training: the crafted examples against closed forms, the losses, and ``train --adversarial``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import underhood
from underhood.adversarial import training as at
from underhood.adversarial.training import robust_accuracy, training_loss
from underhood.cli import main
from underhood.core.errors import InputError
from underhood.models.training import train

from .adversarial_models import one_thread  # noqa: F401


def _linear(k: int = 2, d: int = 12, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    lin = nn.Linear(d, k)
    return nn.Sequential(nn.Flatten(), lin), lin.weight.detach()


def test_fgsm_example_is_the_signed_step_on_a_linear_model():
    # two classes: d CE / dx = (1 - p_y) (w_other - w_y), whose sign does not depend on the random start;
    # with alpha = 2 eps every start lands on the ball's corner eps * sign(w_other - w_y)
    model, w = _linear()
    x = torch.rand(16, 3, 2, 2) * 0.5 + 0.25
    y = torch.randint(0, 2, (16,))
    eps = 0.05
    adv = at.fgsm_example(model, x, y, eps, alpha=2 * eps, generator=torch.Generator().manual_seed(0))
    sign = (w[1 - y] - w[y]).sign().view(16, 3, 2, 2)
    torch.testing.assert_close(adv, x + eps * sign)


def test_fgsm_and_pgd_examples_stay_in_the_ball_and_box_and_raise_the_loss():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x, y = torch.rand(32, 3, 8, 8), torch.randint(0, 5, (32,))
    eps = 8 / 255
    for adv in (at.fgsm_example(model, x, y, eps), at.pgd_example(model, x, y, eps, steps=5)):
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    # parameters are not touched by crafting: no gradient accumulates on them
    assert all(p.grad is None for p in model.parameters())


def test_pgd_example_beats_fgsm_on_average():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    x, y = torch.rand(64, 3, 8, 8), torch.randint(0, 5, (64,))
    g = torch.Generator().manual_seed(0)
    loss_fgsm = F.cross_entropy(model(at.fgsm_example(model, x, y, 0.05, generator=g)), y)
    loss_pgd = F.cross_entropy(model(at.pgd_example(model, x, y, 0.05, steps=10, generator=g)), y)
    assert loss_pgd >= loss_fgsm


def test_vat_direction_is_the_weight_difference_for_two_linear_classes():
    # KL(p(x) || p(x + r)) of a 2-class linear model has Hessian ~ (w1 - w0)(w1 - w0)^T: the power iteration's
    # dominant direction is +-(w1 - w0), scaled to eps
    model, w = _linear(d=12, seed=3)
    x = torch.rand(8, 3, 2, 2)
    r = at.vat_direction(model, x, model(x), 0.7, generator=torch.Generator().manual_seed(0))
    diff = (w[1] - w[0]) / (w[1] - w[0]).norm()
    flat = r.flatten(1)
    torch.testing.assert_close(flat.norm(dim=1), torch.full((8,), 0.7))
    assert (flat @ diff).abs().min() / 0.7 > 0.999


def test_vat_loss_is_cross_entropy_plus_a_nonnegative_smoothness_term():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.rand(16, 3, 2, 2), torch.randint(0, 3, (16,))
    ce = F.cross_entropy(model(x), y)
    total = at.vat_loss(model, x, y, eps=1.0, alpha=1.0)
    assert total > ce
    assert torch.isclose(at.vat_loss(model, x, y, eps=1.0, alpha=0.0), ce)


@pytest.mark.parametrize("method", at.METHODS)
def test_each_loss_trains_a_tiny_model(method):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.rand(64, 3, 2, 2), torch.randint(0, 3, (64,))
    fn = at.loss(method, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = None
    for _ in range(30):
        loss = fn(model, x, y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_loss_errors_are_one_line():
    with pytest.raises(InputError, match="adversarial: unknown method 'trades'"):
        at.loss("trades")
    with pytest.raises(InputError, match=r"adversarial_eps: .*\(0, 1\)"):
        at.loss("fgsm", eps=8)
    with pytest.raises(InputError, match="adversarial_eps: .*positive L2"):
        at.loss("vat", eps=-1)
    with pytest.raises(InputError, match="adversarial_steps"):
        at.loss("pgd", steps=0)


def test_train_adversarial_records_robust_accuracy(tmp_path):
    out = tmp_path / "robust.safetensors"
    rng = torch.random.get_rng_state()
    result = train("digits", data="digits", epochs=1, batch_size=128, out=out, progress=False,
                   loss=training_loss("fgsm", eps="8/255"))
    assert torch.equal(torch.random.get_rng_state(), rng)  # seeded inside, the caller's generator untouched
    meta = underhood.load_model(str(out), device="cpu").meta
    assert meta["adversarial"] == {"method": "fgsm", "eps": pytest.approx(8 / 255)}
    assert 0 <= meta["robust_accuracy"] <= meta["test_accuracy"] + 0.05
    assert "--adversarial fgsm --adversarial-eps 0.0313725" in meta["command"]
    assert result.model.meta["robust_accuracy"] == meta["robust_accuracy"]


def test_the_old_adversarial_keyword_names_its_replacement():
    with pytest.raises(InputError, match="adversarial: .*training_loss"):
        train("digits", data="digits", epochs=1, adversarial="fgsm")


def test_robust_accuracy_is_at_most_clean_accuracy_and_pgd_breaks_the_standard_model():
    model = underhood.load_model("digits", device="cpu")
    data = underhood.datasets.digits(split="test")
    robust = robust_accuracy(model, data, eps=0.1, steps=10, n=64)
    assert robust < 0.5
    assert robust_accuracy(model, data, eps=1e-9, steps=1, n=64) > 0.9


def test_train_command_prints_clean_and_robust_beside_the_standard_model(tmp_path, capsys):
    out = tmp_path / "d.safetensors"
    assert main(["train", "--data", "digits", "--arch", "digits", "--epochs", "1", "--adversarial", "fgsm",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "standard ('digits')" in text and "adversarially trained" in text and "PGD-20" in text
    assert out.is_file()


def test_train_command_rejects_a_bad_radius(capsys):
    assert main(["train", "--data", "digits", "--arch", "digits", "--adversarial", "pgd", "--adversarial-eps", "3",
                 "--no-progress"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "adversarial-eps" in err[0]
