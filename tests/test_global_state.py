"""Library code never changes the user's process-wide state, on import or on call.

No matplotlib backend is chosen and pyplot is never imported (figures are bare ``Figure``
objects); no global random generator is seeded for good (library code draws from explicit
generators or runs under ``core.seeding.seeded``, which restores the state); only the ``demo``
command seeds the process.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "underhood"

DRAW = textwrap.dedent("""
    import random, sys
    import numpy as np
    import torch
    import matplotlib
    backend = matplotlib.rcParams._get_backend_or_none()
    states = (torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())

    import underhood
    from underhood import viz, weights
    from underhood.adversarial import fgsm
    from underhood.attribution import saliency

    model = underhood.load_model("shapes", device="cpu")
    x = underhood.datasets.shapes(2, seed=1).images
    figures = [viz.attribution_figure(x, {"saliency": saliency(model, x)}),
               fgsm(model, x, eps=8 / 255).figure(),
               weights.toy2d_strip(weights.toy2d("moons", hidden=4, steps=20, seed=0), k=2),
               viz.filters_figure(weights.filters(model))]
    for fig in figures:
        viz.figure_to_png(fig)
    underhood.models.train("digits", data="digits", epochs=1, batch_size=256, progress=False)

    assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
    assert matplotlib.rcParams._get_backend_or_none() == backend, "the matplotlib backend changed"
    assert torch.equal(torch.random.get_rng_state(), states[0]), "torch's global generator changed"
    assert random.getstate() == states[1], "Python's random state changed"
    assert (np.random.get_state()[1] == states[2]).all(), "NumPy's global generator changed"
    print("ok")
""")


def test_drawing_and_training_leave_the_process_state_alone():
    out = subprocess.run([sys.executable, "-c", DRAW], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_backend_choice_and_no_global_seeding_in_library_code():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for node, name in _calls(ast.parse(path.read_text())):
            where = f"{rel}:{node.lineno} {name}"
            if name.endswith("matplotlib.use") or name in ("use", "pyplot.switch_backend", "plt.switch_backend"):
                wrong.append(where)
            if name in ("torch.manual_seed", "torch.cuda.manual_seed_all", "np.random.seed", "numpy.random.seed",
                        "random.seed", "torch.seed", "seed_everything") and rel not in ("core/seeding.py",
                                                                                          "cli/report.py"):
                wrong.append(where)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and "pyplot" in n for n in names):
                    wrong.append(f"{rel}:{node.lineno} imports pyplot")
    assert not wrong, "library code changing global state:\n" + "\n".join(wrong)
