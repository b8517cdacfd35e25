"""Black-box attacks: they read the model's softmax probabilities only, never a gradient.

:func:`one_pixel` (Su, Vargas & Sakurai 2019) searches, by differential evolution, for the
few pixels whose new colours flip the decision. Every forward pass runs under
``torch.no_grad``; the population of every image is evaluated in batched forward passes,
and an image stops costing queries as soon as one candidate fools the model.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.batching import batches, resolve_batch_size
from ..core.checks import number, positive_int
from ..core.errors import InputError
from ..core.seeding import generator
from .base import AttackResult, Labels, attacking, finish, is_adversarial, setup


def _pick_three(n: int, population: int, g: torch.Generator) -> torch.Tensor:
    """``[n, population, 3]`` indices ``r1, r2, r3``, distinct and different from the member's own index.

    Each draw is uniform over the indices not taken yet: draw in a range shortened by the
    number taken, then step over the taken indices in increasing order.
    """
    taken = torch.arange(population).expand(n, population)[..., None]  # the member itself
    for k in range(3):
        r = torch.randint(0, population - 1 - k, (n, population), generator=g)
        for e in taken.sort(-1).values.unbind(-1):
            r = r + (r >= e)
        taken = torch.cat([taken, r[..., None]], -1)
    return taken[..., 1:]


def _children(parents: torch.Tensor, r: torch.Tensor, fresh: torch.Tensor, f: float,
              span: torch.Tensor) -> torch.Tensor:
    """DE/rand/1 without crossover: ``parents[r1] + f * (parents[r2] - parents[r3])`` per member.

    ``parents`` is ``[A, P, pixels, 2 + C]``, ``r`` ``[A, P, 3]``; positions that leave the image
    take their value in ``fresh`` (uniform draws), colours are clipped to ``[0, 1]``.
    """
    a = torch.arange(len(parents), device=parents.device)[:, None]
    child = parents[a, r[..., 0]] + f * (parents[a, r[..., 1]] - parents[a, r[..., 2]])
    pos, col = child[..., :2], child[..., 2:].clamp(0, 1)
    outside = (pos < 0) | (pos >= span)
    return torch.cat([torch.where(outside, fresh, pos), col], -1)


def _paint(x: torch.Tensor, rows: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Copies of ``x[rows]`` with the candidates' pixels set: ``candidates`` is ``[B, pixels, 2 + C]``
    holding (row, column, colour per channel); positions are floored to integers."""
    c, h, w = x.shape[1:]
    images = x[rows].clone()
    ys = candidates[..., 0].long().clamp(0, h - 1)[..., None]
    xs = candidates[..., 1].long().clamp(0, w - 1)[..., None]
    b = torch.arange(len(rows), device=x.device)[:, None, None]
    images[b, torch.arange(c, device=x.device), ys, xs] = candidates[..., 2:]
    return images


def _scores(model: nn.Module, x: torch.Tensor, rows: torch.Tensor, candidates: torch.Tensor,
            size: int) -> torch.Tensor:
    """Logits ``[B, K]`` of the painted images, in forward passes of at most ``size`` images."""
    return torch.cat([model(_paint(x, rows[s], candidates[s])).float() for s in batches(len(rows), size)])


def _fitness(logits: torch.Tensor, cls: torch.Tensor, targeted: bool) -> torch.Tensor:
    """What DE minimises: ``log p_label`` (untargeted) or ``-log p_target`` (targeted); the log keeps
    the probability's order without its float32 saturation near 1."""
    logp = logits.log_softmax(-1).gather(-1, cls[..., None]).squeeze(-1)
    return -logp if targeted else logp


@torch.no_grad()
def one_pixel(model: nn.Module, inputs: torch.Tensor, labels: Labels = None, *, pixels: int = 1,
              population: int = 400, iterations: int = 100, f: float = 0.5, target: Labels = None,
              seed: int = 0, batch_size: int | str | None = None, early_stop: bool = True) -> AttackResult:
    """One-pixel attack (Su, Vargas & Sakurai 2019): differential evolution on ``pixels`` pixels.

    A candidate is ``pixels`` tuples ``(row, column, colour)`` with one colour value per
    channel; applied to an image it overwrites those pixels (an L0 attack: at most ``pixels``
    spatial positions change, each by any amount inside the box). Each image has its own
    ``population`` of candidates, evolved by DE/rand/1 without crossover, as in the paper:

        ``child_i = parent_r1 + f * (parent_r2 - parent_r3)``, with ``r1, r2, r3, i`` distinct,

    and a child replaces its parent when its fitness is at least as good (ties go to the child,
    so the population drifts across plateaus). Fitness is the probability of the label
    (untargeted, minimised) or of the target (targeted, maximised), compared in log space.
    Conventions: the initial positions are uniform over the image; the initial colours are
    ``N(0.5, 127/255)`` clipped to ``[0, 1]`` (the paper's ``N(128, 127)`` on 0..255); a child's
    position outside the image is re-drawn uniformly (the rule of SciPy's
    ``differential_evolution``, which common re-implementations use), its colours are clipped to
    ``[0, 1]``.
    The paper's defaults: ``population=400``, ``iterations=100``, ``f=0.5``.

    Black-box: only the model's outputs are read (softmax probabilities; the argmax for
    success), always under ``torch.no_grad``. With ``early_stop`` an image stops as soon as a
    candidate is adversarial (:func:`~underhood.adversarial.base.is_adversarial`: the label lost,
    or the target won) and costs no more queries; its result is the fittest adversarial
    candidate. Otherwise the result is the fittest candidate after ``iterations`` generations.
    The population of every image is evaluated in forward passes of ``batch_size`` images
    (default: measured, :func:`~underhood.core.batching.resolve_batch_size`). Random draws are
    made on the CPU with ``seed`` for every image at every generation, so an image's result does
    not depend on when the others stop, nor on ``batch_size``.

    Cost: ``population * (1 + generations)`` model queries (images classified) per image
    (``info["queries"]``), plus the clean batch when ``labels`` is None. With the paper's defaults,
    an image that resists costs 40,400 queries; on 16 held-out shapes images one pixel fooled none
    (the true class's probability fell from 0.90-0.98 to 0.59-0.94) and three pixels fooled 5.

    Args:
        model: a classifier returning logits ``[N, K]`` on ``[N, C, H, W]`` pixels in ``[0, 1]``.
        inputs: ``[N, C, H, W]`` images in ``[0, 1]``.
        labels: the classes to move away from (default: the model's predictions).
        pixels: number of pixels the attack may change (the paper's 1, 3 and 5).
        population: candidates per image; DE/rand/1 needs at least 4.
        iterations: the most generations after the initial population.
        f: the differential weight (scale factor) of DE/rand/1.
        target: classes to reach (targeted attack), or ``None``.
        seed: seed of the initial population and of every generation's draws.
        batch_size: images per forward pass, or ``None``/``"auto"``.
        early_stop: stop each image at its first adversarial candidate.

    Returns:
        :class:`AttackResult` whose ``info`` holds ``queries`` ``[N]`` (candidate images
        evaluated per image), ``iterations`` ``[N]`` (generations run per image), ``positions``
        ``[N, pixels, 2]`` (row, column) of the pixels of the returned candidate (the same position
        may appear twice), ``pixels``, ``population``, ``f``, ``seed``.

    Example:
        >>> r = one_pixel(model, x, pixels=3, population=100, iterations=50)   # doctest: +SKIP
        >>> r.success_rate, r.info["positions"][0]                               # doctest: +SKIP
    """
    pixels = positive_int("pixels", pixels)
    population = positive_int("population", population)
    if population < 4:
        raise InputError(f"population: DE/rand/1 needs at least 4 candidates per image (a parent and three "
                         f"others), got {population}")
    iterations = positive_int("iterations", iterations)
    f = number("f", f, strict=True)
    with attacking(model):
        p = setup(model, inputs, labels, target)
        x, device = p.x, p.x.device
        n, c, h, w = x.shape
        if pixels > h * w:
            raise InputError(f"pixels: {pixels} pixels asked for but the images have {h * w}; "
                             "give at most H * W")
        size = resolve_batch_size(batch_size, model, (c, h, w))
        cls = p.labels if p.target is None else p.target
        g = generator(seed)
        span = torch.tensor([h, w], dtype=torch.float32)

        def positions(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.rand((*shape, 2), generator=g) * span

        colours = (0.5 + 127 / 255 * torch.randn((n, population, pixels, c), generator=g)).clamp(0, 1)
        pop = torch.cat([positions((n, population, pixels)), colours], -1).to(device)  # [N, P, pixels, 2 + C]
        active = torch.arange(n, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        queries = torch.zeros(n, dtype=torch.long, device=device)
        generations = torch.zeros(n, dtype=torch.long, device=device)
        labels_p = p.labels.repeat_interleave(population)
        target_p = None if p.target is None else p.target.repeat_interleave(population)

        def evaluate(cand: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Fitness ``[A, P]`` and logits ``[A, P, K]`` of the candidates ``[A, P, ...]`` of images ``rows``."""
            out = _scores(model, x, rows.repeat_interleave(population), cand.flatten(0, 1), size)
            out = out.view(len(rows), population, -1)
            queries[rows] += population
            return _fitness(out, cls[rows, None].expand(-1, population), p.target is not None), out

        def fooled(out: torch.Tensor) -> torch.Tensor:
            """``[N, P]`` bool: which candidates are adversarial."""
            return is_adversarial(out.flatten(0, 1), labels_p, target_p).view(n, population)

        fit, logits = evaluate(pop, active)
        for _ in range(iterations):
            if early_stop:
                done |= fooled(logits).any(1)
                active = (~done).nonzero().squeeze(1)
            # every image draws at every generation, so its result does not depend on when the others stop
            r = _pick_three(n, population, g).to(device)
            fresh = positions((n, population, pixels)).to(device)
            if len(active) == 0:
                break
            parents = pop[active]
            child = _children(parents, r[active], fresh[active], f, span.to(device))
            child_fit, child_logits = evaluate(child, active)
            better = child_fit <= fit[active]
            pop[active] = torch.where(better[..., None, None], child, parents)
            fit[active] = torch.where(better, child_fit, fit[active])
            logits[active] = torch.where(better[..., None], child_logits, logits[active])
            generations[active] += 1
        hit = fooled(logits)
        # the fittest adversarial candidate where there is one, else the fittest candidate
        best = fit.masked_fill(~hit & hit.any(1, keepdim=True), torch.inf).argmin(1)
        rows = torch.arange(n, device=device)
        chosen = pop[rows, best]
        adversarial = _paint(x, rows, chosen)
        info = {"method": "one_pixel", "pixels": pixels, "population": population, "iterations": generations,
                "f": f, "seed": seed, "queries": queries, "early_stop": bool(early_stop),
                "positions": chosen[..., :2].long().clamp_max(torch.tensor([h - 1, w - 1], device=device))}
        return finish(model, p, adversarial, info, logits=logits[rows, best])
