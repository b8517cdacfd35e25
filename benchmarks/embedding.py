"""The ``embedding`` section: underhood's t-SNE layout against scikit-learn's on the same features.

Features: the shapes model's last conv stage (``features.17``, 64 x 8 x 8, flattened) on
``underhood.datasets.shapes(n)`` (generated in chunks so memory stays flat), reduced once to 50
dimensions by PCA. Both sides get that very ``[n, 50]`` matrix: ``embed_features(...,
method="tsne", pca_dims=None, scores=False)`` (openTSNE: 250 + 500 iterations, Barnes-Hut below
10,000 points and FFT-interpolated gradients from there; threads from 1,000 points) and
``sklearn.manifold.TSNE(init="pca")`` (Barnes-Hut, 1,000 iterations, OpenMP over every core).
The forward pass and the PCA are not timed. Each side runs once (the 20,000-point sklearn run
takes many minutes); the line gives both times, the ratio sklearn/ours, and the two layouts'
trustworthiness and 10-NN accuracy (our scores, the same code for both), so a speed-up bought
with a worse layout would show.

Why t-SNE threads start at ``THREADED_FROM = 1000`` points (``activations.embed``), as measured when
it was set: on a quiet 2-core machine two threads gained ~1.2x at 100-500 points (0.35 -> 0.29 s) and
~1.8x at 5,000 (22 -> 12 s); on one shared with other work, waking threads for steps this small cost
20-50 ms each (100 points: 0.5 s on one thread, 16 s on two).

    python benchmarks/embedding.py          # 5,000 and 20,000 points
    python benchmarks/embedding.py 5000     # only these sizes
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

import underhood
from underhood.activations.embed import embed_features, features, knn_accuracy, trustworthiness

CHUNK = 2500  # images generated and pushed through the model at a time
LAYER = "features.17"


def shapes_features(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, 50]`` PCA-50 features of the last conv stage on ``n`` shapes images, and their labels."""
    from sklearn.decomposition import PCA

    model = underhood.load_model("shapes", device="cpu")
    feats, labels = [], []
    for i, start in enumerate(range(0, n, CHUNK)):
        data = underhood.datasets.shapes(min(CHUNK, n - start), seed=seed + i)
        feats.append(features(model, data, LAYER, pool="flatten", batch_size=64)[LAYER])
        labels.append(data.labels)
    z = PCA(50, svd_solver="randomized", random_state=seed).fit_transform(torch.cat(feats).numpy())
    return torch.from_numpy(z).float(), torch.cat(labels)


def bench_size(n: int, report: Callable[[str, str, float], None], timed: Callable[..., tuple[float, float]]) -> None:
    from sklearn.manifold import TSNE

    t0 = time.perf_counter()
    z, labels = shapes_features(n)
    report(f"embedding features, shapes {n}", f"{LAYER} flattened -> PCA-50 in "
           f"{time.perf_counter() - t0:5.1f} s (not timed below)", 1.0)
    layouts: dict[str, torch.Tensor] = {}

    def ours() -> None:
        layouts["ours"] = embed_features({"f": z}, "tsne", pca_dims=None, scores=False).coords["f"]

    def sklearn() -> None:
        tsne = TSNE(2, perplexity=30.0, init="pca", random_state=0)
        layouts["sklearn"] = torch.from_numpy(tsne.fit_transform(z.numpy())).float()

    t_ours, cw_ours = timed(ours, 1)
    t_sk, cw_sk = timed(sklearn, 1)
    quality = {k: (trustworthiness(z, v, 10), knn_accuracy(v, labels, 10)) for k, v in layouts.items()}
    report(f"t-SNE {n} points, PCA-50", f"ours {t_ours:6.1f} s vs sklearn {t_sk:6.1f} s: "
           f"sklearn/ours {t_sk / t_ours:5.2f}x", min(cw_ours, cw_sk))
    report("  layout quality (T(10), 10-NN acc.)", "ours {:.3f} {:.1%}, sklearn {:.3f} {:.1%}".format(
        *quality["ours"], *quality["sklearn"]), 1.0)


def bench_embed(report: Callable[[str, str, float], None], timed: Callable[..., tuple[float, float]], *,
                sizes: tuple[int, ...] = (5000, 20000)) -> None:
    """One :func:`bench_size` per size (each side once: the 20,000-point sklearn run takes many minutes)."""
    for n in sizes:
        bench_size(n, report, timed)


if __name__ == "__main__":
    from run import report, timed

    torch.set_num_threads(2)
    bench_embed(report, timed, sizes=tuple(int(a) for a in sys.argv[1:]) or (5000, 20000))
