"""torch's nn.Dropout against arcast_core.dropout.Dropout on CPU: the module alone and a generator training step.

Side by side in one run, alternating rounds (this machine is shared): the recommender's generator at the size of the
bench/recsys.py rows (d_model 128, d_ff 512, 4 heads, 2 + 2 layers, item-level encoder, 20 history items, batch 256)
trained on random codes with AdamW, each round building the model with one dropout class, and the module alone on the
generator's activations (forward and backward). Medians per variant and their ratio.

    .venv/bin/python bench/dropout.py            # -> bench/results/dropout.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arcast_core.dropout import Dropout  # noqa: E402
from arcast_core.files import atomic_write_text  # noqa: E402
from recsys.generator import Generator, GeneratorConfig  # noqa: E402

VARIANTS = {"torch nn.Dropout": nn.Dropout, "arcast Dropout": Dropout}
LEVEL_SIZES = (256, 256, 256, 8)  # three code levels and the collision level, as the recipe's codes
BATCH, ITEMS = 256, 20


def generator_steps(dropout: type[nn.Dropout], steps: int, seed: int) -> float:
    """Seconds per training step of a generator whose dropout layers are ``dropout``."""
    torch.manual_seed(seed)
    config = GeneratorConfig(level_sizes=LEVEL_SIZES, encoder_unit="item", d_model=128, d_ff=512, heads=4)
    model = Generator(config).train()
    for layer in model.modules():
        if isinstance(layer, nn.Dropout):
            layer.__class__ = dropout  # both keep p and inplace the same way: only forward differs
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    offsets = torch.as_tensor(config.offsets)
    codes = torch.stack([torch.randint(0, n, (BATCH * (ITEMS + 1),)) for n in LEVEL_SIZES], dim=1)
    history = (codes[: BATCH * ITEMS] + offsets).view(BATCH, ITEMS * len(LEVEL_SIZES))
    target = codes[BATCH * ITEMS :]
    elapsed = []
    for _ in range(steps):
        start = time.perf_counter()
        memory, keep = model.encode(history)
        hidden = model.decode(model.cross_keys_values(memory), keep, target)
        loss = model.code_loss(hidden, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        elapsed.append(time.perf_counter() - start)
    return float(np.median(elapsed[1:]))


def module_seconds(dropout: nn.Module, shape: tuple[int, ...], repeats: int) -> float:
    x = torch.randn(*shape, requires_grad=True)
    elapsed = []
    for _ in range(repeats):
        start = time.perf_counter()
        dropout(x).sum().backward()
        elapsed.append(time.perf_counter() - start)
    return float(np.median(elapsed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per variant")
    parser.add_argument("--steps", type=int, default=12, help="generator training steps per round")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "dropout.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_start = os.getloadavg()
    steps: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        order = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            steps[name].append(generator_steps(VARIANTS[name], args.steps, seed=round_))
    shapes = {"hidden (256, 21, 128)": (256, 21, 128), "feed-forward (256, 21, 512)": (256, 21, 512)}
    modules = {
        label: {name: module_seconds(cls(0.1).train(), shape, 30) * 1e3 for name, cls in VARIANTS.items()}
        for label, shape in shapes.items()
    }
    base, ours = (float(np.median(steps[name])) * 1e3 for name in VARIANTS)
    results = {
        "command": " ".join(["bench/dropout.py", *sys.argv[1:]]),
        "started": started,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": load_start,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": 1,
        },
        "setup": {
            "generator": "d_model 128, d_ff 512, 4 heads, 2 + 2 layers, item-level encoder, dropout 0.1",
            "batch": BATCH,
            "history_items": ITEMS,
            "rounds": args.rounds,
            "steps_per_round": args.steps,
        },
        "generator_step_ms": {name: float(np.median(v)) * 1e3 for name, v in steps.items()},
        "generator_step_ms_per_round": {name: [round(s * 1e3, 2) for s in v] for name, v in steps.items()},
        "step_speedup": base / ours,
        "module_forward_backward_ms": modules,
        "load_average_at_end": os.getloadavg(),
    }
    atomic_write_text(Path(args.out), json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("generator_step_ms", "step_speedup", "module_forward_backward_ms")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
