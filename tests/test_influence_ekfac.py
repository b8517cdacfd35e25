"""EKFAC (George et al. 2018; Grosse et al. 2023) against brute force: the Kronecker factors against the exact
Gauss-Newton matrix of a linear softmax model, the eigenvalue correction against explicit per-example
gradients (torch.func), the damped inverse against a dense solve (the pseudo-inverse at damping 0); errors,
lifecycle and the cache state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from underhood.core.errors import InputError
from underhood.core.hooks import layer_io
from underhood.core.names import inner
from underhood.influence import ekfac as ekfac_module
from underhood.influence.ekfac import EKFAC
from underhood.models.architectures import ShapesResNet, ShapesVGG


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


class StandIn:
    """The contract's Problem, reduced to what EKFAC reads (names, loss, modules, split, join)."""

    def __init__(self, model: nn.Module, names: list[str], loss=cross_entropy) -> None:
        self.model, self.names, self.loss = model, list(names), loss
        params = dict(inner(model).named_parameters())
        self.shapes = [params[n].shape for n in self.names]
        self.sizes = [params[n].numel() for n in self.names]
        self.n_params = sum(self.sizes)

    def modules(self) -> dict[str, nn.Module]:
        net = inner(self.model)
        return {m: net.get_submodule(m) for m in dict.fromkeys(n.rpartition(".")[0] for n in self.names)}

    def split(self, G: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = G.split(self.sizes, dim=1)
        return {n: p.reshape(len(G), *s) for n, p, s in zip(self.names, parts, self.shapes)}

    def join(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([parts[n].reshape(len(parts[n]), -1) for n in self.names], dim=1)


def per_example_grads(problem: StandIn, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reference per-example gradients [n, P] (torch.func), in Problem.names order."""
    model = problem.model
    frozen = {n: p.detach() for n, p in model.named_parameters()}

    def loss(params, x, y):
        out = functional_call(model, {**frozen, **params}, (x[None],))
        return problem.loss(out, y[None])[0]

    params = {n: frozen[n] for n in problem.names}
    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, inputs, labels)
    return torch.cat([g[n].reshape(len(inputs), -1) for n in problem.names], dim=1)


def flat_order(out: int, inp: int, bias: bool) -> torch.Tensor:
    """Indices taking a layer's [out, in(+1)] matrix, flattened row-major, to the flat order (weight, then bias)."""
    idx = torch.arange(out * (inp + bias)).reshape(out, inp + bias)
    return torch.cat([idx[:, :inp].reshape(-1), idx[:, inp]]) if bias else idx.reshape(-1)


def dense(ekfac: EKFAC, kind: str = "ekfac") -> torch.Tensor:
    """The fitted curvature as an explicit [P, P] matrix in flat order (layers in problem.names order)."""
    blocks = []
    for layer in ekfac.layers:
        f = ekfac.factors[layer.name]
        if kind == "ekfac":
            Q = torch.kron(f.s_eigenvectors, f.a_eigenvectors)
            M = Q @ torch.diag(f.lam.reshape(-1)) @ Q.T
        else:  # K-FAC: A ⊗ S, i.e. kron(S, A) for row-major vec(G)
            A = f.a_eigenvectors @ torch.diag(f.a_eigenvalues) @ f.a_eigenvectors.T
            S = f.s_eigenvectors @ torch.diag(f.s_eigenvalues) @ f.s_eigenvectors.T
            M = torch.kron(S, A)
        out, inp = layer.dims
        perm = flat_order(out, inp - (layer.bias is not None), layer.bias is not None)
        blocks.append(M[perm][:, perm])
    return torch.block_diag(*blocks)


def linear_problem(seed: int = 0, zero: bool = False) -> StandIn:
    torch.manual_seed(seed)
    model = nn.Linear(3, 4).double()
    if zero:
        with torch.no_grad():
            model.weight.zero_()
            model.bias.zero_()
    return StandIn(model, ["weight", "bias"])


def mean_loss_hessian(problem: StandIn, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    model = problem.model
    w, b = model.weight.detach(), model.bias.detach()

    def mean_loss(flat):
        W, B = flat[:w.numel()].reshape(w.shape), flat[w.numel():]
        return problem.loss(inputs @ W.T + B, labels).mean()

    return torch.autograd.functional.hessian(mean_loss, torch.cat([w.reshape(-1), b]))


def ggn(problem: StandIn, inputs: torch.Tensor) -> torch.Tensor:
    """(1/N) sum_n J_n^T (diag(p_n) - p_n p_n^T) J_n, by brute force over examples."""
    model = problem.model
    w, b = model.weight.detach(), model.bias.detach()
    total = 0
    for x in inputs:
        def logits(flat, x=x):
            return x @ flat[:w.numel()].reshape(w.shape).T + flat[w.numel():]
        flat = torch.cat([w.reshape(-1), b])
        J = torch.autograd.functional.jacobian(logits, flat)
        p = torch.softmax(logits(flat), 0)
        total = total + J.T @ (torch.diag(p) - torch.outer(p, p)) @ J
    return total / len(inputs)


# --- oracle: one Linear layer, a single position ------------------------------------------------------------

def test_kfac_of_linear_softmax_approximates_the_hessian_of_the_mean_loss():
    # At zero weights every softmax is uniform, so E_y[s s^T] is the same for every input and the exact
    # Gauss-Newton matrix (= the Hessian for a linear softmax model) is exactly A ⊗ S in expectation:
    # the sampled fit must match it up to Monte Carlo noise, which also pins the scaling (mean loss, no 1/N).
    problem = linear_problem(zero=True)
    inputs = torch.randn(3000, 3, dtype=torch.float64) + 0.5
    labels = torch.randint(0, 4, (3000,))
    H = mean_loss_hessian(problem, inputs, labels)
    torch.testing.assert_close(ggn(problem, inputs[:50]), mean_loss_hessian(problem, inputs[:50], labels[:50]))
    ekfac = EKFAC.fit(problem, inputs, labels, batch_size=1000, fisher="sampled", seed=0)
    for kind in ("kfac", "ekfac"):
        err = (dense(ekfac, kind) - H).norm() / H.norm()
        assert err < 0.06, (kind, err)
    # the empirical Fisher is another matrix: with every label 0, S is (p - e_0)(p - e_0)^T, of rank one
    emp = EKFAC.fit(problem, inputs, torch.zeros_like(labels), batch_size=1000, fisher="empirical")
    assert (dense(emp, "kfac") - H).norm() / H.norm() > 0.1


def test_eigenvalue_correction_is_the_exact_diagonal_in_the_kronecker_eigenbasis():
    problem = linear_problem(seed=1)
    inputs = torch.randn(40, 3, dtype=torch.float64)
    labels = torch.randint(0, 4, (40,))
    ekfac = EKFAC.fit(problem, inputs, labels, batch_size=16, fisher="empirical")
    G = per_example_grads(problem, inputs, labels)  # [n, 16]: weight (4x3) then bias (4)
    Fisher = G.T @ G / len(G)
    f = ekfac.factors[""]
    Q = torch.kron(f.s_eigenvectors, f.a_eigenvectors)[flat_order(4, 3, True)]
    Gn = torch.cat([G[:, :12].reshape(-1, 4, 3), G[:, 12:, None]], dim=2)  # [n, out, in+1]
    lam = (f.s_eigenvectors.T @ Gn @ f.a_eigenvectors).square().mean(0)
    torch.testing.assert_close(f.lam, lam)
    torch.testing.assert_close(f.lam.reshape(-1), torch.diagonal(Q.T @ Fisher @ Q))
    # K-FAC factors: A = E[a a^T] with the trailing 1, S = E[s s^T]
    a = torch.cat([inputs, torch.ones(40, 1, dtype=torch.float64)], 1)
    s = Gn[:, :, 3]
    A = f.a_eigenvectors @ torch.diag(f.a_eigenvalues) @ f.a_eigenvectors.T
    S = f.s_eigenvectors @ torch.diag(f.s_eigenvalues) @ f.s_eigenvectors.T
    torch.testing.assert_close(A, a.T @ a / 40)
    torch.testing.assert_close(S, s.T @ s / 40)
    # EKFAC is the best fit to the Fisher in that eigenbasis, so never worse than K-FAC (George et al. 2018)
    assert (dense(ekfac) - Fisher).norm() <= (dense(ekfac, "kfac") - Fisher).norm() + 1e-12
    torch.testing.assert_close(torch.trace(dense(ekfac)), torch.trace(Fisher))


# --- conv: unfold + einsum against torch.func per-example gradients -----------------------------------------

class ConvNet(nn.Module):
    def __init__(self, **conv) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, **conv)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(3 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))
        return self.fc(F.adaptive_avg_pool2d(y, 2).flatten(1) + 0.1)


CONVS = [dict(stride=2, padding=1), dict(stride=1, padding=2, dilation=2, bias=False),
         dict(padding="same", padding_mode="reflect"), dict(stride=(2, 1), padding=(0, 1))]


def conv_problem(conv: dict, seed: int = 0) -> tuple[StandIn, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = ConvNet(**conv).double()
    names = [n for n, _ in model.named_parameters()]
    return StandIn(model, names), torch.randn(12, 2, 7, 6, dtype=torch.float64), torch.randint(0, 5, (12,))


@pytest.mark.parametrize("conv", CONVS)
def test_conv_eigenvalue_correction_matches_per_example_gradients(conv, monkeypatch):
    monkeypatch.setattr(ekfac_module, "_CHUNK", 100)  # rotated per-example gradients a few examples at a time
    problem, inputs, labels = conv_problem(conv)
    ekfac = EKFAC.fit(problem, inputs, labels, batch_size=5, fisher="empirical")
    G = per_example_grads(problem, inputs, labels)
    parts = problem.split(G)
    for layer in ekfac.layers:
        Gn = parts[layer.weight].reshape(len(G), layer.dims[0], -1)
        if layer.bias is not None:
            Gn = torch.cat([Gn, parts[layer.bias][..., None]], dim=2)
        f = ekfac.factors[layer.name]
        lam = (f.s_eigenvectors.T @ Gn @ f.a_eigenvectors).square().mean(0)
        torch.testing.assert_close(f.lam, lam)
    torch.testing.assert_close(torch.trace(dense(ekfac)), (G * G).sum() / len(G))


def test_conv_factors_follow_the_kfc_convention():
    # A sums the patch outer products over positions, S averages the output-gradient ones (Grosse & Martens 2016)
    problem, inputs, labels = conv_problem(dict(stride=2, padding=1))
    conv = problem.model.conv
    ekfac = EKFAC.fit(problem, inputs, labels, fisher="empirical")
    f = ekfac.factors["conv"]
    patches = F.unfold(inputs, 3, padding=1, stride=2).transpose(1, 2)  # [n, T, 18]
    a = torch.cat([patches, torch.ones(*patches.shape[:2], 1, dtype=torch.float64)], 2)
    out = conv(inputs).detach().requires_grad_(True)
    loss = cross_entropy(problem.model.fc(F.adaptive_avg_pool2d(out.relu(), 2).flatten(1) + 0.1), labels).sum()
    s = torch.autograd.grad(loss, out)[0].flatten(2).transpose(1, 2)  # [n, T, 3]
    T = s.shape[1]
    A = torch.einsum("nti,ntj->ij", a, a) / len(a)
    S = torch.einsum("nti,ntj->ij", s, s) / (len(s) * T)
    torch.testing.assert_close(f.a_eigenvectors @ torch.diag(f.a_eigenvalues) @ f.a_eigenvectors.T, A)
    torch.testing.assert_close(f.s_eigenvectors @ torch.diag(f.s_eigenvalues) @ f.s_eigenvectors.T, S)


# --- solve and self_scores against a dense inverse -----------------------------------------------------------

@pytest.mark.parametrize("conv", CONVS[:2])
def test_solve_and_self_scores_match_a_dense_inverse(conv):
    problem, inputs, labels = conv_problem(conv, seed=3)
    ekfac = EKFAC.fit(problem, inputs, labels, batch_size=4, seed=1)
    G = torch.randn(5, problem.n_params, dtype=torch.float64)
    damping = 0.05
    M = dense(ekfac) + damping * torch.eye(problem.n_params, dtype=torch.float64)
    X = ekfac.solve(G, damping)
    torch.testing.assert_close(X, torch.linalg.solve(M, G.T).T)
    torch.testing.assert_close(ekfac.self_scores(G, damping), (G * X).sum(1))
    assert ekfac.solve(G.float(), damping).dtype == torch.float32


def test_damping_zero_is_the_inverse_when_nonsingular_and_the_pseudo_inverse_when_singular():
    # a hidden layer: its corrected eigenvalues are all positive
    torch.manual_seed(2)
    problem = StandIn(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double(), ["0.weight", "0.bias"])
    inputs, labels = torch.randn(60, 3, dtype=torch.float64), torch.randint(0, 3, (60,))
    ekfac = EKFAC.fit(problem, inputs, labels, fisher="empirical")
    G = torch.randn(3, problem.n_params, dtype=torch.float64)
    torch.testing.assert_close(ekfac.solve(G, 0.0), torch.linalg.solve(dense(ekfac), G.T).T)
    # the logits' layer of a softmax is always singular (adding one vector to every class row changes no
    # loss), and two examples leave most directions unseen: damping=0 gives the pseudo-inverse
    head = linear_problem(seed=2)
    x, y = torch.randn(2, 3, dtype=torch.float64), torch.randint(0, 4, (2,))
    few = EKFAC.fit(head, x, y, fisher="empirical")
    assert (few._lam[""] == 0).sum() >= 10
    pinv = torch.linalg.pinv(dense(few), hermitian=True, rtol=1e-8)
    G = torch.randn(3, head.n_params, dtype=torch.float64)
    torch.testing.assert_close(few.solve(G, 0.0), G @ pinv)
    torch.testing.assert_close(few.self_scores(G, 0.0), ((G @ pinv) * G).sum(1))
    # a training gradient lies in the range, so nothing of it is dropped: F (F^+ g) = g
    g = per_example_grads(head, x, y)
    torch.testing.assert_close(few.solve(g, 0.0) @ dense(few), g)
    assert few.top_eigenvalue() == pytest.approx(few.factors[""].lam.max().item())


# --- errors -------------------------------------------------------------------------------------------------

def test_batchnorm_or_odd_choices_are_input_errors_naming_params():
    model = ShapesVGG(in_channels=3, width=4)
    with pytest.raises(InputError, match=r"params: ekfac needs Linear or Conv2d.*'features\.1' is a BatchNorm2d"):
        EKFAC.fit(StandIn(model, ["features.0.weight", "features.1.weight"]), torch.rand(2, 3, 16, 16), None)
    with pytest.raises(InputError, match="params: ekfac needs the weight of 'classifier'"):
        EKFAC.fit(StandIn(model, ["classifier.bias"]), torch.rand(2, 3, 16, 16), None)
    grouped = nn.Sequential(nn.Conv2d(2, 2, 1, groups=2), nn.Flatten())
    with pytest.raises(InputError, match="groups=1"):
        EKFAC.fit(StandIn(grouped, ["0.weight"]), torch.rand(2, 2, 1, 1), None)


def test_argument_errors():
    problem = linear_problem()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 4, (6,))
    with pytest.raises(InputError, match="fisher"):
        EKFAC.fit(problem, x, y, fisher="true")
    with pytest.raises(InputError, match="batch_size"):
        EKFAC.fit(problem, x, y, batch_size=0)
    with pytest.raises(InputError, match="labels"):
        EKFAC.fit(problem, x, None, fisher="empirical")
    with pytest.raises(InputError, match="inputs"):
        EKFAC.fit(problem, x[:0], y[:0])
    ekfac = EKFAC.fit(problem, x, y)
    with pytest.raises(InputError, match="damping"):
        ekfac.solve(torch.zeros(1, problem.n_params, dtype=torch.float64), -1.0)
    with pytest.raises(InputError, match="G: expected"):
        ekfac.solve(torch.zeros(1, 5, dtype=torch.float64), 0.1)


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.fc(x)))


def test_a_layer_called_twice_is_an_input_error():
    with pytest.raises(InputError, match="'fc' ran 2 times"):
        EKFAC.fit(StandIn(Shared(), ["fc.weight", "fc.bias"]), torch.randn(4, 3), None)


# --- lifecycle ------------------------------------------------------------------------------------------------

def model_state(model: nn.Module) -> tuple:
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [p.grad for p in model.parameters()], {k: v.clone() for k, v in model.state_dict().items()})


def assert_left_as_found(model: nn.Module, before: tuple) -> None:
    after = model_state(model)
    assert after[:3] == before[:3]
    for k, v in before[3].items():
        assert torch.equal(after[3][k], v), k  # BatchNorm ran in eval mode: running statistics untouched
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


@pytest.mark.parametrize("arch,names", [
    (ShapesResNet, ["layer1.0.conv1.weight", "layer3.0.conv2.weight", "fc.weight", "fc.bias"]),
    (ShapesVGG, ["features.14.weight", "features.14.bias", "classifier.weight", "classifier.bias"])])
def test_fit_leaves_the_model_as_found_also_when_it_raises(arch, names):
    torch.manual_seed(0)
    model = arch(in_channels=3, width=4).train()
    params = dict(model.named_parameters())
    params[names[0]].requires_grad_(False)
    params["bn1.weight" if arch is ShapesResNet else "features.1.weight"].requires_grad_(False)
    before = model_state(model)
    x = torch.rand(6, 3, 16, 16)
    problem = StandIn(model, names)
    ekfac = EKFAC.fit(problem, x, None, batch_size=4)
    assert_left_as_found(model, before)
    G = torch.randn(2, problem.n_params)
    assert torch.isfinite(ekfac.solve(G, 0.0)).all() and torch.isfinite(ekfac.self_scores(G, 0.0)).all()

    calls = []

    def failing(logits, labels):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return cross_entropy(logits, labels)

    with pytest.raises(RuntimeError, match="boom"):
        EKFAC.fit(StandIn(model, names, loss=failing), x, None, batch_size=4)
    assert_left_as_found(model, before)


def test_layer_io_records_inputs_and_output_gradients_before_in_place_ops():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    with layer_io(model, {"first": model[0], "last": model[2]}) as io:
        model(x).sum().backward()
    h = model[0](x).detach()
    torch.testing.assert_close(io.gradients["first"][0], (h > 0).float() * model[2].weight.sum(0))
    torch.testing.assert_close(io.inputs["last"][0], h.relu())
    torch.testing.assert_close(io.inputs["first"][0], x)
    assert not model[0]._forward_hooks and not model[2]._forward_hooks


# --- determinism and the cache state --------------------------------------------------------------------------

def test_sampled_labels_depend_on_the_seed_not_on_the_batch_size():
    problem, inputs, labels = conv_problem(dict(padding=1), seed=4)
    a = EKFAC.fit(problem, inputs, None, batch_size=12, seed=7)
    b = EKFAC.fit(problem, inputs, None, batch_size=5, seed=7)
    c = EKFAC.fit(problem, inputs, None, batch_size=5, seed=8)
    for name in a.factors:
        torch.testing.assert_close(a.factors[name].lam, b.factors[name].lam)
    assert not torch.allclose(a.factors["fc"].lam, c.factors["fc"].lam)


def test_state_round_trip(tmp_path):
    from safetensors.torch import load_file

    from underhood.core.io import write_tensors

    problem, inputs, labels = conv_problem(dict(stride=2, padding=1), seed=5)
    ekfac = EKFAC.fit(problem, inputs, labels, batch_size=8)
    state = ekfac.state()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert {"conv/lambda", "fc/lambda", "conv/a_eigenvectors", "n_examples"} <= set(state)
    write_tensors(tmp_path / "ekfac.safetensors", state)
    state = load_file(str(tmp_path / "ekfac.safetensors"))
    again = EKFAC.from_state(problem, state)
    assert again.n_examples == 12 and repr(again) == repr(ekfac)
    G = torch.randn(3, problem.n_params, dtype=torch.float64)
    for key, value in ekfac.state().items():
        assert torch.equal(again.state()[key], value), key
    torch.testing.assert_close(again.solve(G, 0.1), ekfac.solve(G, 0.1), rtol=1e-12, atol=1e-14)  # BLAS alignment
    with pytest.raises(InputError, match="state"):
        EKFAC.from_state(StandIn(problem.model, ["conv.weight", "fc.weight", "fc.bias"]), state)


def test_with_the_real_problem_and_its_head_shortcut():
    from underhood.influence.problem import Problem

    torch.manual_seed(0)
    model = ShapesResNet(in_channels=3, width=4).eval()
    x = torch.rand(10, 3, 16, 16)
    y = torch.randint(0, 8, (10,))
    head = Problem(model, "fc")
    features = head.prepare(x)  # the head runs alone on the recorded features
    assert head.head == "fc"
    a = EKFAC.fit(head, features, y, fisher="empirical", batch_size=4)
    b = EKFAC.fit(StandIn(model, ["fc.weight", "fc.bias"]), x, y, fisher="empirical", batch_size=4)
    torch.testing.assert_close(a.factors["fc"].lam, b.factors["fc"].lam, rtol=1e-4, atol=1e-7)
    deep = Problem(model, ["layer3.0.conv2", "fc"])
    ekfac = EKFAC.fit(deep, deep.prepare(x), y, batch_size=4)
    G = deep.grads(x, y)
    torch.testing.assert_close(ekfac.self_scores(G, 0.1), (G * ekfac.solve(G, 0.1)).sum(1), rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="ekfac.*'layer3.0.bn1' is a BatchNorm2d"):
        EKFAC.fit(Problem(model, "layer3"), x, y)
