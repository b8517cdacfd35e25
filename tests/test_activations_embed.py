"""activations.embed and activations.neighbors: features, 2-D layouts, their scores, neighbours."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

import underhood
from underhood.activations.embed import embed, embed_features, features, knn_accuracy, trustworthiness
from underhood.activations.neighbors import neighbors
from underhood.core.errors import InputError, LayerError
from underhood.core.hooks import capture
from underhood.data import ImageSet

from .conftest import model_problems


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def _clusters(n: int, d: int = 12, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = 4 * torch.randn(classes, d, generator=g)
    return centres[labels] + torch.randn(n, d, generator=g), labels


# ----------------------------------------------------------------------------- features


def test_features_equal_a_direct_forward_for_every_pool_and_batch_size():
    net, x = _net(), torch.rand(13, 3, 12, 12)
    net.eval()
    with capture(net, ["1", "4", "6"]) as cap, torch.no_grad():
        net(x)
    a1, a4, a6 = (cap.activations[k] for k in ("1", "4", "6"))
    net.train()
    for pool, expected in (("avg", a4.mean((2, 3))), ("max", a4.amax((2, 3))), ("flatten", a4.flatten(1))):
        for b in (1, 4, 13):
            f = features(net, x, ["4", "1", "6"], pool=pool, batch_size=b)
            assert list(f) == ["4", "1", "6"]  # the order asked
            assert f["4"].dtype == torch.float32 and f["4"].shape == expected.shape
            assert torch.allclose(f["4"], expected, atol=1e-5)
            assert torch.allclose(f["6"], a6, atol=1e-5)  # a [N, D] layer is kept as it is
    assert torch.allclose(features(net, x, "1", pool="max", batch_size=5)["1"], a1.amax((2, 3)), atol=1e-6)
    assert net.training  # the train-mode BatchNorm was run in eval mode, and restored


def test_start_stop_slices_concatenate_to_the_whole():
    net, x = _net(), torch.rand(11, 3, 12, 12)
    whole = features(net, x, ["4", "input"], batch_size=3)
    parts = [features(net, x, ["4", "input"], batch_size=3, start=s, stop=e) for s, e in ((0, 4), (4, 5), (5, 11))]
    for name in whole:
        assert torch.allclose(torch.cat([p[name] for p in parts]), whole[name], atol=1e-6)
    assert features(net, x, "4", start=7)["4"].shape == (4, 4)


def test_input_layer_is_the_flattened_pixels_whatever_the_pool():
    net, data = _net(), ImageSet(torch.rand(6, 3, 12, 12), torch.zeros(6, dtype=torch.long), ["a"])
    for pool in ("avg", "flatten"):
        f = features(net, data, "input", pool=pool)
        assert torch.equal(f["input"], data.images.flatten(1))


# ----------------------------------------------------------------------------- scores


@pytest.mark.parametrize("k", [1, 5, 12])
def test_trustworthiness_equals_sklearn(k):
    from sklearn.manifold import trustworthiness as sk_trustworthiness

    rng = np.random.default_rng(k)
    x = rng.normal(size=(60, 9))
    y = x[:, :2] + 0.7 * rng.normal(size=(60, 2))  # a noisy layout: some neighbourhoods false
    ours = trustworthiness(torch.from_numpy(x), torch.from_numpy(y), k)
    assert ours == pytest.approx(sk_trustworthiness(x, y, n_neighbors=k), abs=1e-12)
    assert trustworthiness(torch.from_numpy(x), torch.from_numpy(x[:, :9]), k) == pytest.approx(1.0)


def test_trustworthiness_on_a_sample_of_rows_estimates_the_whole():
    x, _ = _clusters(400, d=8)
    y = x[:, :2] + 0.5 * torch.randn(400, 2, generator=torch.Generator().manual_seed(1))
    exact = trustworthiness(x, y, 10)
    sampled = trustworthiness(x, y, 10, max_rows=200, seed=3)
    assert sampled != exact and sampled == pytest.approx(exact, abs=0.01)


def test_knn_accuracy_equals_a_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    points, labels = torch.randn(70, 2, generator=g), torch.randint(0, 4, (70,), generator=g)
    for k in (1, 4, 10):
        correct = 0
        for i in range(70):
            d = sorted((float((points[i] - points[j]).norm()), j) for j in range(70) if j != i)
            votes = Counter(int(labels[j]) for _, j in d[:k])
            top = max(votes.values())
            correct += min(c for c, v in votes.items() if v == top) == int(labels[i])  # ties: smallest class
        assert knn_accuracy(points, labels, k, chunk=16) == pytest.approx(correct / 70)


# ----------------------------------------------------------------------------- layouts


def test_pca_layout_equals_sklearn_pca():
    from sklearn.decomposition import PCA

    for n, d in ((200, 12), (30, 80)):  # the covariance and the SVD solvers
        x, labels = _clusters(n, d)
        e = embed_features({"f": x}, "pca", labels=labels, pca_dims=10)
        ref = PCA(2, svd_solver="full").fit_transform(x.double().numpy())
        assert e.coords["f"].shape == (n, 2)
        assert np.allclose(e.coords["f"].numpy(), ref, atol=1e-3)
        assert e.knn_accuracy["f"] > 0.9 and e.trustworthiness["f"] > 0.7 and e.method == "pca"


def test_tsne_is_seeded_and_reproducible():
    x, labels = _clusters(90)
    a = embed_features({"f": x}, "tsne", labels=labels, seed=1)
    b = embed_features({"f": x}, "tsne", labels=labels, seed=1)
    c = embed_features({"f": x}, "tsne", labels=labels, seed=2, scores=False)
    assert torch.equal(a.coords["f"], b.coords["f"]) and not torch.allclose(a.coords["f"], c.coords["f"])
    assert a.knn_accuracy == b.knn_accuracy and a.knn_accuracy["f"] > 0.95 and c.knn_accuracy == {}
    small = embed_features({"f": x[:10]}, "tsne", seed=0)  # perplexity clipped to (N - 1) / 3
    assert small.coords["f"].shape == (10, 2) and small.knn_accuracy == {} and small.labels is None


def test_embed_takes_the_imagesets_labels_and_layer_order():
    net = _net()
    data = ImageSet(torch.rand(20, 3, 12, 12), torch.arange(20) % 2, ["a", "b"])
    e = embed(net, data, ["6", "input", "4"], "pca", batch_size=8)
    assert e.layers == ["6", "input", "4"] and list(e.coords) == e.layers
    assert torch.equal(e.labels, data.labels) and set(e.knn_accuracy) == set(e.layers)
    override = embed(net, data, "4", "pca", labels=torch.zeros(20, dtype=torch.long))
    assert override.knn_accuracy["4"] == 1.0


# ----------------------------------------------------------------------------- neighbours


def test_pixel_neighbours_equal_a_brute_force_loop():
    net = _net()
    data, query = torch.rand(25, 3, 12, 12), torch.rand(3, 3, 12, 12)
    query[1] = data[7]  # a query in the dataset finds itself first
    nb = neighbors(net, query, data, "4", k=4, batch_size=10)
    for q in range(3):
        d = sorted((float((query[q] - data[j]).flatten().norm()), j) for j in range(25))[:4]
        assert nb.pixel_index[q].tolist() == [j for _, j in d]
        assert torch.allclose(nb.pixel_distance[q], torch.tensor([v for v, _ in d]), atol=1e-5)
    assert nb.pixel_index[1, 0] == 7 and nb.pixel_distance[1, 0] == 0 and nb.feature_index[1, 0] == 7
    assert nb.pixel_index.shape == nb.feature_distance.shape == (3, 4) and nb.layer == "4"


def test_feature_neighbours_use_the_layers_features():
    net = _net()
    data, query = torch.rand(30, 3, 12, 12), torch.rand(2, 3, 12, 12)
    for metric in ("euclidean", "cosine"):
        nb = neighbors(net, query, data, "4", k=5, pool="flatten", metric=metric)
        fd, fq = features(net, data, "4", pool="flatten")["4"], features(net, query, "4", pool="flatten")["4"]
        if metric == "euclidean":
            d = torch.cdist(fq.double(), fd.double())
        else:
            d = 1 - torch.nn.functional.cosine_similarity(fq[:, None].double(), fd[None].double(), dim=2)
        dist, index = d.sort(1)
        assert torch.equal(nb.feature_index, index[:, :5])
        assert torch.allclose(nb.feature_distance.double(), dist[:, :5], atol=1e-5) and nb.metric == metric
    one = neighbors(net, query[0], data, "6", k=2)  # one [C, H, W] image
    assert one.feature_index.shape == (1, 2)


# ----------------------------------------------------------------------------- errors and state


def test_errors_and_model_state():
    net, x = _net().train(), torch.rand(8, 3, 12, 12)
    with pytest.raises(LayerError, match="did you mean"):
        features(net, x, ["input", "44"])
    with pytest.raises(LayerError, match="did you mean"):
        neighbors(net, x[:1], x, "44")
    with pytest.raises(InputError, match="method: unknown value 'isomap'; choose one of pca, tsne, umap"):
        embed(net, x, "4", "isomap")
    with pytest.raises(InputError, match=r"k: 9 neighbours .* only 8 images; pass k <= 8"):
        neighbors(net, x[:1], x, "4", k=9)
    with pytest.raises(InputError, match="pool"):
        features(net, x, "4", pool="median")
    with pytest.raises(InputError, match="start, stop"):
        features(net, x, "4", start=5, stop=5)
    with pytest.raises(InputError, match="dataset"):
        features(net, x[0], "4")
    with pytest.raises(InputError, match="query"):
        neighbors(net, torch.rand(1, 3, 10, 10), x, "4")
    with pytest.raises(InputError, match="metric"):
        neighbors(net, x[:1], x, "4", metric="manhattan")
    with pytest.raises(InputError, match="labels"):
        embed_features({"f": torch.rand(8, 3)}, "pca", labels=torch.zeros(7))
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match=r"pip install underhood\[umap\]"):
            embed_features({"f": torch.rand(8, 3)}, "umap")
    embed(net, x, ["input", "4"], "pca", batch_size=3)
    neighbors(net, x[:2], x, "4", k=3)
    assert net.training and model_problems(net.modules()) == []


# ----------------------------------------------------------------------------- quality


def test_digits_tsne_is_trustworthy_and_separates_classes_with_depth():
    model, data = underhood.load_model("digits", device="cpu"), underhood.datasets.digits()
    layers = ["input", "conv1", "conv2", "fc1", "fc2"]
    feats = features(model, data, layers, batch_size=90)
    tsne = embed_features(feats, "tsne", labels=data.labels)
    pca = embed_features(feats, "pca", labels=data.labels)
    print()
    for name in layers:
        print(f"digits {name:6s} t-SNE kNN {tsne.knn_accuracy[name]:.3f} T {tsne.trustworthiness[name]:.3f}   "
              f"PCA kNN {pca.knn_accuracy[name]:.3f} T {pca.trustworthiness[name]:.3f}")
    assert tsne.trustworthiness["fc2"] >= 0.9
    assert tsne.knn_accuracy["fc2"] >= 0.95 and tsne.knn_accuracy["fc2"] > tsne.knn_accuracy["input"]
    assert pca.knn_accuracy["fc2"] > pca.knn_accuracy["input"]


# ----------------------------------------------------------------------------- figures


def test_figures_have_a_panel_per_layer_and_a_cell_per_neighbour():
    from underhood.viz.embedding import embedding_figure, neighbors_figure, spread_points
    from underhood.viz.render import figure_to_png

    net = _net()
    data = ImageSet(torch.rand(24, 1, 12, 12).expand(-1, 3, -1, -1).contiguous(), torch.arange(24) % 3,
                    ["a", "b", "c"])
    e = embed(net, data, ["input", "4", "6"], "pca", batch_size=8)
    fig = embedding_figure(e, classes=data.classes, images=data.images, thumbnails=4)
    assert [ax.get_title() for ax in fig.axes] == ["input", "4", "6"]
    assert figure_to_png(fig).startswith(b"\x89PNG")
    nb = neighbors(net, data.images[:2, :1].expand(-1, 3, -1, -1), data, "4", k=3)
    fig = neighbors_figure(data.images[:2], data, nb, query_labels=data.labels[:2])
    assert len(fig.axes) == 2 * (1 + 2 * 3) and any("feature space at 4" in t.get_text() for t in fig.texts)
    figure_to_png(fig)
    grey = neighbors_figure(torch.rand(1, 12, 12), data.images[:, :1], nb.__class__(
        *(t[:1] for t in (nb.pixel_index, nb.pixel_distance, nb.feature_index, nb.feature_distance)), "4", "cosine"))
    assert grey.axes[0].images[0].get_cmap().name == "gray"
    figure_to_png(grey)
    xy = torch.tensor([[0.0, 0], [0.1, 0], [5, 5], [5, 5.1], [-5, 5]]).numpy()
    assert sorted(spread_points(xy, 3)) in ([0, 2, 4], [1, 2, 4], [0, 3, 4], [1, 3, 4])


def test_tsne_steps_and_panels_per_row():
    from underhood.viz.embedding import embedding_figure

    x, y = _clusters(60)
    short = embed_features({"f": x, "g": 2 * x, "h": x[:, :4]}, "tsne", labels=y, steps=30)
    again = embed_features({"f": x}, "tsne", labels=y, steps=30)
    default = embed_features({"f": x}, "tsne", labels=y)
    assert torch.equal(short.coords["f"], again.coords["f"])  # seeded, whatever the other layers
    assert not torch.allclose(short.coords["f"], default.coords["f"])  # 30 steps are not openTSNE's 750
    with pytest.raises(InputError, match="steps"):
        embed_features({"f": x}, "tsne", steps=0)
    fig = embedding_figure(short, ncols=2)
    assert [ax.get_title() for ax in fig.axes] == ["f", "g", "h"]
    rows = sorted({round(ax.get_position().y0, 3) for ax in fig.axes})
    assert len(rows) == 2  # two panels on the first row, one on the second
