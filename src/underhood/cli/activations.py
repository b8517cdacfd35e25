"""Commands of the activations family: ``activations``, ``statistics``, ``dissect``, ``embed``,
``neighbors`` and ``ablate``.

The dataset-scale ones (``dissect``, ``embed``, ``statistics``) shard their data over ``torchrun``
processes and resume (see :mod:`underhood.core.distributed`). ``activations``, ``statistics`` and
``dissect`` read token layers ``[N, L, C]`` and channels-last layers ``[N, h, w, C]`` as
``[N, C, h, w]`` (``--tokens``, ``--grid``, ``--layout`` fix the reading; see
:mod:`underhood.core.layout`).
"""

from __future__ import annotations

import argparse
import json

from ..core.errors import InputError
from .common import (
    Add,
    dataset_from,
    final_dir,
    load_images,
    model_from,
    out_dir,
    parse_names,
    resolved_device,
    run_shards,
    save_result,
    sharded_job,
)
from .options import (
    channels,
    count,
    data_spec,
    image_file,
    layout_options,
    layout_reading,
    natural,
    parse_channels,
    positive_float,
)
from .options import names as name_list

EXAMPLES = {
    "activations": "underhood activations samples/star.png --model shapes --layers features.2,features.9 --k 8\n"
                   "  underhood activations samples/photo.png --random --k 16   # images: underhood samples",
    "statistics": "underhood statistics --model shapes --data shapes:4096 --layer features.16\n"
                  "  torchrun --nproc-per-node 2 -m underhood statistics --data my_images/ --layer layer4",
    "dissect": "underhood dissect --model shapes --data shapes:4096 --layer features.16 --channels 0:16\n"
               "  torchrun --nproc-per-node 4 -m underhood dissect --model resnet.pt --data imgs/ --layer layer3\n"
               "  underhood dissect --model timm:vit_small_patch16_224 --data imgs/ --layer blocks.8 --tokens 1",
    "embed": "underhood embed --model digits --data digits --layers input,conv1,conv2,fc2 --method tsne\n"
             "  torchrun --nproc-per-node 2 -m underhood embed --data shapes:20000 --method pca",
    "neighbors": "underhood neighbors samples/star.png --model shapes --data shapes:2000 --layer pool --k 6",
    "ablate": "underhood ablate --model shapes --data shapes:1000 --layer features.16",
}


def _key(reading: dict) -> dict:
    """The layout options that were given, JSON-plain, for a sharded job's key (none given: the key of before)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in reading.items() if v is not None}


def cmd_activations(args: argparse.Namespace) -> None:
    from ..activations import maps
    from ..core.device import model_device
    from ..core.io import write_manifest, write_tensors
    from ..core.layers import stages
    from ..viz import feature_maps_figure, save_figure

    model = model_from(args)
    images = load_images(args.images, model)
    names = parse_names(args.layers) if args.layers else stages(model)
    acts = maps(model, images.to(model_device(model)), names, **layout_reading(args))
    out = out_dir(args, "activations")
    files = []
    for i in range(len(args.images)):
        name = f"maps-{i}.png" if len(args.images) > 1 else "maps.png"
        fig = feature_maps_figure([(n, acts[n][i]) for n in names], images[i], k=args.k,
                                  select="random" if args.random else "top", seed=args.seed)
        save_figure(fig, out / name, dpi=130)
        files.append(name)
    write_tensors(out / "maps.safetensors", {n: a.cpu() for n, a in acts.items()},
                  {"images": [str(p) for p in args.images]})
    write_manifest(out, "activations", [*files, "maps.safetensors"], model=args.model, layers=names,
                   images=[str(p) for p in args.images], k=args.k, random=args.random)
    print(f"feature maps of {len(names)} layers written to {final_dir(args, 'activations').resolve()}")


def cmd_statistics(args: argparse.Namespace) -> None:
    from ..activations.statistics import accumulate, from_state, histogram_edges, merge
    from ..core.distributed import broadcast, session
    from ..core.io import write_tensors, write_text
    from ..viz import save_figure
    from ..viz.units import statistics_figure

    with session(resolved_device(args)) as world:
        model = model_from(args)
        data = dataset_from(args, model)
        # the histogram edges are fixed once per run (by rank 0) and kept with the shards
        reading = layout_reading(args)
        job = sharded_job(args, "statistics", model, data, {"layer": args.layer, "bins": args.bins, **_key(reading)},
                          [args.layer])
        job.prepare(world)
        edges_file = job.folder / "edges.safetensors"
        edges = None
        if world.main:
            from safetensors.torch import load_file

            if edges_file.exists() and job.done():
                edges = load_file(str(edges_file))["edges"]
            else:
                edges = histogram_edges(model, data, args.layer, bins=args.bins, batch_size=args.batch_size,
                                        **reading)
                write_tensors(edges_file, {"edges": edges})
        edges = broadcast(edges)
        job.fresh = False
        parts = run_shards(job, lambda part: accumulate(model, data, args.layer, edges, start=part.start,
                                                        stop=part.stop, batch_size=args.batch_size, **reading),
                           world, args)
        if parts is None:
            return
    st = from_state(args.layer, merge(parts))
    out = out_dir(args, "statistics")
    save_figure(statistics_figure(st), out / "statistics.png", dpi=120)
    rows = ["channel,mean,std,active,dead"] + [f"{c},{m:.6g},{s:.6g},{a:.4f},{int(d)}" for c, (m, s, a, d) in
                                                enumerate(zip(st.mean.tolist(), st.std.tolist(), st.active.tolist(),
                                                              st.dead.tolist()))]
    write_text(out / "statistics.csv", "\n".join(rows) + "\n")
    save_result(st, out, "statistics", ["statistics.png", "statistics.csv"], model=args.model, data=args.data,
                layer=args.layer, n=st.n, processes=world.size, shards=len(job.slices), resumed_shards=job.resumed)
    print(f"{args.layer}: {len(st.mean)} channels over {st.n} images, {int(st.dead.sum())} dead, mean share "
          f"active {float(st.active.mean()):.1%}; written to {final_dir(args, 'statistics').resolve()}")


def cmd_dissect(args: argparse.Namespace) -> None:
    from ..activations.patches import Partial, finish, merge, scan
    from ..core.distributed import session
    from ..viz import save_figure
    from ..viz.units import top_patches_figure

    channels = parse_channels(args.channels)
    pattern = None if args.pattern == "none" else args.pattern
    with session(resolved_device(args)) as world:
        model = model_from(args)
        data = dataset_from(args, model)
        if args.k > len(data):
            raise InputError(f"--k: {args.k} images per channel asked, the dataset has only {len(data)}; "
                             f"pass --k {len(data)} or less")
        reading = layout_reading(args)
        job = sharded_job(args, "dissect", model, data, {"layer": args.layer, "k": args.k, "channels": channels,
                                                         **_key(reading)}, [args.layer])
        parts = run_shards(job, lambda part: scan(model, data, args.layer, args.k, channels=channels,
                                                  batch_size=args.batch_size, start=part.start,
                                                  stop=part.stop, **reading).tensors(),
                           world, args)
        if parts is None:
            return
        state = merge([Partial(**p) for p in parts], args.k)
        shown = list(range(min(args.show, len(state.channels))))
        result = finish(model, data.images, args.layer, state, pattern=pattern, crops=True,
                        batch_size=args.batch_size, **reading) if len(state.channels) * args.k <= 4096 else \
            finish(model, data.images, args.layer, state, crops=False, **reading)
    out = out_dir(args, "dissect")
    files = []
    if result.patches is not None:
        save_figure(top_patches_figure(result, units=shown, ncols=4,
                                       title=f"{args.layer}: top-{args.k} patches of {len(result.channels)} "
                                             f"channels over {result.n} images"
                                             + (f" | beside them, the {result.rule} pattern" if pattern else "")),
                    out / "dissect.png", dpi=120)
        files.append("dissect.png")
    save_result(result, out, "dissect", files, model=args.model, data=args.data, layer=args.layer, k=args.k,
                channels=channels, pattern=pattern, n=result.n, field=result.field, processes=world.size,
                shards=len(job.slices), resumed_shards=job.resumed, layout=result.info.get("layout"))
    cell = " (global: the boxes are the patch cells the tokens embed)" if result.info.get("box") == "cell" else ""
    if "pattern" in result.info:
        print(f"note: {result.info['pattern']}")
    print(f"{args.layer}: top-{args.k} images of {len(result.channels)} channels over {result.n} images "
          f"(receptive field {result.field or 'global'}{cell}); written to {final_dir(args, 'dissect').resolve()}")


def cmd_embed(args: argparse.Namespace) -> None:
    import torch

    from ..activations.embed import embed_features, features
    from ..activations.maps import embedding_layers
    from ..core.distributed import session
    from ..core.io import write_tensors, write_text
    from ..viz import save_figure
    from ..viz.embedding import embedding_figure

    with session(resolved_device(args)) as world:
        model = model_from(args)
        data = dataset_from(args, model)
        layers = parse_names(args.layers) if args.layers else embedding_layers(model)
        job = sharded_job(args, "embed", model, data, {"layers": layers, "pool": args.pool}, layers)
        parts = run_shards(job, lambda part: features(model, data, layers, pool=args.pool,
                                                      batch_size=args.batch_size, start=part.start,
                                                      stop=part.stop), world, args)
        if parts is None:
            return
    feats = {n: torch.cat([p[n] for p in parts]) for n in layers}
    labelled = data.info.get("labelled", True)
    emb = embed_features(feats, args.method, labels=data.labels if labelled else None, seed=args.seed,
                         perplexity=args.perplexity)
    out = out_dir(args, "embed")
    save_figure(embedding_figure(emb, classes=data.classes if labelled else None, images=data.images,
                                 thumbnails=args.thumbnails), out / "embedding.png", dpi=120)
    write_tensors(out / "features.safetensors", feats, {"layers": layers, "pool": args.pool})
    scores = {n: {"knn_accuracy": emb.knn_accuracy.get(n), "trustworthiness": emb.trustworthiness.get(n)}
              for n in layers}
    write_text(out / "embedding.json", json.dumps({"method": args.method, "layers": scores}, indent=1) + "\n")
    save_result(emb, out, "embed", ["embedding.png", "features.safetensors", "embedding.json"], model=args.model,
                data=args.data, layers=layers, method=args.method, pool=args.pool, seed=args.seed, n=len(data),
                processes=world.size, shards=len(job.slices), resumed_shards=job.resumed)
    for n in layers:
        s = scores[n]
        knn = f"2-D kNN accuracy {s['knn_accuracy']:.1%}" if s["knn_accuracy"] is not None else ""
        print(f"{n}: {tuple(feats[n].shape)} features; {knn}, trustworthiness {s['trustworthiness']:.3f}")
    print(f"embeddings written to {final_dir(args, 'embed').resolve()}")


def cmd_neighbors(args: argparse.Namespace) -> None:
    from ..activations.neighbors import neighbors
    from ..core.io import write_text
    from ..viz import save_figure
    from ..viz.embedding import neighbors_figure

    model = model_from(args)
    query = load_images(args.images, model)
    data = dataset_from(args, model)
    result = neighbors(model, query, data, args.layer, k=args.k, metric=args.metric, batch_size=args.batch_size)
    out = out_dir(args, "neighbors")
    labelled = data.info.get("labelled", True)
    save_figure(neighbors_figure(query, data.images, result, classes=data.classes if labelled else None,
                                 labels=data.labels if labelled else None), out / "neighbors.png", dpi=120)
    rows = [{"image": str(p), "pixel": result.pixel_index[i].tolist(), "feature": result.feature_index[i].tolist(),
             "pixel_distance": result.pixel_distance[i].tolist(),
             "feature_distance": result.feature_distance[i].tolist()} for i, p in enumerate(args.images)]
    write_text(out / "neighbors.json", json.dumps({"layer": args.layer, "metric": args.metric, "queries": rows},
                                                  indent=1) + "\n")
    save_result(result, out, "neighbors", ["neighbors.png", "neighbors.json"], model=args.model, data=args.data,
                layer=args.layer, k=args.k, metric=args.metric, images=[str(p) for p in args.images])
    print(f"{args.k} nearest neighbours in pixel space and at {args.layer}; written to "
          f"{final_dir(args, 'neighbors').resolve()}")


def cmd_ablate(args: argparse.Namespace) -> None:
    from ..activations.ablate import ablate
    from ..core.io import write_text
    from ..viz import save_figure
    from ..viz.ablation import ablation_figure

    model = model_from(args)
    data = dataset_from(args, model)
    if not data.info.get("labelled", True):
        raise InputError("--data: ablation measures accuracy, so it needs labels; give a folder with one "
                         "sub-folder per class or a built-in dataset")
    result = ablate(model, data, args.layer, seed=args.seed, units=parse_channels(args.channels),
                    batch_size=args.batch_size, progress=not args.no_progress)
    out = out_dir(args, "ablate")
    save_figure(ablation_figure(result), out / "ablation.png", dpi=120)
    summary = {"layer": args.layer, "n": result.n, "baseline": result.baseline,
               "most_harmful_units": result.single.argsort()[:5].tolist()}
    write_text(out / "ablation.json", json.dumps(summary, indent=1) + "\n")
    save_result(result, out, "ablate", ["ablation.png", "ablation.json"], model=args.model, data=args.data,
                layer=args.layer, seed=args.seed)
    print(f"{args.layer}: baseline accuracy {result.baseline:.1%}; curves written to "
          f"{final_dir(args, 'ablate').resolve()}")


def register(add: Add) -> None:
    """Add the commands to the ``underhood`` parser (``add`` as in :class:`underhood.cli.common.Commands`)."""

    def data_options(p: argparse.ArgumentParser, sharded: bool = False) -> None:
        p.add_argument("--model", default="shapes", help="model spec (default: the built-in shapes model)")
        p.add_argument("--data", type=data_spec, help="shapes[:N], shapes-spurious[:p], digits[:split] or an image "
                                                      "folder (default: the model's held-out set)")
        p.add_argument("--batch-size", type=count(), help="images per forward pass (default: measured)")
        p.add_argument("--no-progress", action="store_true")
        if sharded:
            p.add_argument("--shard-size", type=count(), default=1024,
                           help="images per shard: the unit of work of each process and of resuming (default 1024)")
            p.add_argument("--fresh", action="store_true", help="discard finished shards of an earlier run in --out")

    p = add("activations", cmd_activations, "feature maps of image files at each stage")
    p.add_argument("images", nargs="+", type=image_file, help="image files")
    p.add_argument("--model", default="shapes")
    p.add_argument("--layers", type=name_list, help="comma-separated layers (default: one per stage)")
    p.add_argument("--k", type=count(), default=8, help="channels per layer (default 8)")
    p.add_argument("--random", action="store_true", help="k random channels instead of the k most active")
    p.add_argument("--seed", type=natural(), default=0)
    layout_options(p)

    p = add("statistics", cmd_statistics, "per-channel activation statistics of a layer over a dataset")
    data_options(p, sharded=True)
    p.add_argument("--layer", required=True)
    p.add_argument("--bins", type=count(high=100_000), default=30)
    layout_options(p)

    p = add("dissect", cmd_dissect, "the top-k images and receptive-field patches of every channel of a layer")
    data_options(p, sharded=True)
    p.add_argument("--layer", required=True)
    p.add_argument("--k", type=count(), default=9, help="images per channel (default 9)")
    p.add_argument("--channels", type=channels, help="channels to scan, A:B or a list (default: all)")
    p.add_argument("--pattern", default="guided", choices=["guided", "deconvnet", "gradient", "none"],
                   help="the pattern drawn beside each patch (default guided backprop)")
    p.add_argument("--show", type=count(), default=16, help="channels drawn in the figure (default 16)")
    layout_options(p)

    p = add("embed", cmd_embed, "2-D embeddings (t-SNE, PCA, UMAP) of a dataset at several layers")
    data_options(p, sharded=True)
    p.add_argument("--layers", type=name_list,
                   help="comma-separated layers, 'input' for pixels (default: input, early, middle, last)")
    p.add_argument("--method", default="tsne", choices=["tsne", "pca", "umap"])
    p.add_argument("--pool", default="avg", choices=["avg", "max", "flatten"], help="how maps become vectors")
    p.add_argument("--perplexity", type=positive_float(), default=30.0)
    p.add_argument("--thumbnails", type=natural(), default=0, help="image thumbnails drawn on each panel")
    p.add_argument("--seed", type=natural(), default=0)

    p = add("neighbors", cmd_neighbors, "nearest dataset images in pixel space and in feature space")
    p.add_argument("images", nargs="+", type=image_file, help="query image files")
    data_options(p)
    p.add_argument("--layer", required=True)
    p.add_argument("--k", type=count(), default=5)
    p.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"])

    p = add("ablate", cmd_ablate, "accuracy as a layer's units are zeroed, and their class selectivity")
    data_options(p)
    p.add_argument("--layer", required=True)
    p.add_argument("--channels", type=channels, help="units to ablate, A:B or a list (default: all)")
    p.add_argument("--seed", type=natural(), default=0)
