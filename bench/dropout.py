"""torch's nn.Dropout against arcast_core.dropout.Dropout on CPU: the module alone and training steps of two models.

Side by side in one run, alternating rounds (this machine is shared), each round building the model with one
dropout class: the recommender's generator at the size of the bench/recsys.py rows (d_model 128, d_ff 512, 4 heads,
2 + 2 layers, item-level encoder, 20 history items, batch 256) on random codes, and Informer at the width the
leaderboard's CPU search chose for ETTh1 M (d_model 64, d_ff 256, 8 heads, 1 + 1 layers, lookback 48, label 48,
horizon 24, batch 32, dropout 0.05) and at twice it, on random series; AdamW. The module alone on the generator's
activations (forward and backward). Medians per variant and their ratio.

    .venv/bin/python bench/dropout.py            # -> bench/results/dropout.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arcast_core.dropout import Dropout  # noqa: E402
from arcast_core.files import atomic_write_text  # noqa: E402
from forecasting.models.informer import Informer, InformerConfig  # noqa: E402
from recsys.generator import Generator, GeneratorConfig  # noqa: E402

VARIANTS = {"torch nn.Dropout": nn.Dropout, "arcast Dropout": Dropout}
BASE, OURS = VARIANTS
LEVEL_SIZES = (256, 256, 256, 8)  # three code levels and the collision level, as the recipe's codes
BATCH, ITEMS = 256, 20
INFORMER_BATCH = 32


def use_dropout(model: nn.Module, dropout: type[nn.Dropout]) -> nn.Module:
    """``model`` with every dropout layer of class ``dropout`` (both keep p and inplace alike: only forward differs)."""
    for layer in model.modules():
        if isinstance(layer, nn.Dropout):
            layer.__class__ = dropout
    return model


def median_step(model: nn.Module, loss: Callable[[], torch.Tensor], steps: int) -> float:
    """Seconds per AdamW training step of ``model`` on ``loss``: the median after the first step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    elapsed = []
    for _ in range(steps):
        start = time.perf_counter()
        value = loss()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        elapsed.append(time.perf_counter() - start)
    return float(np.median(elapsed[1:]))


def generator_steps(dropout: type[nn.Dropout], steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    config = GeneratorConfig(level_sizes=LEVEL_SIZES, encoder_unit="item", d_model=128, d_ff=512, heads=4)
    model = use_dropout(Generator(config).train(), dropout)
    offsets = torch.as_tensor(config.offsets)
    codes = torch.stack([torch.randint(0, n, (BATCH * (ITEMS + 1),)) for n in LEVEL_SIZES], dim=1)
    history = (codes[: BATCH * ITEMS] + offsets).view(BATCH, ITEMS * len(LEVEL_SIZES))
    target = codes[BATCH * ITEMS :]

    def loss() -> torch.Tensor:
        memory, keep = model.encode(history)
        return model.code_loss(model.decode(model.cross_keys_values(memory), keep, target), target)

    return median_step(model, loss, steps)


def informer_steps(dropout: type[nn.Dropout], steps: int, seed: int, d_model: int) -> float:
    torch.manual_seed(seed)
    config = InformerConfig(seq_len=48, label_len=48, pred_len=24, d_model=d_model, d_ff=4 * d_model, e_layers=1)
    model = use_dropout(Informer(config).train(), dropout)
    x, y = torch.randn(INFORMER_BATCH, 48, 7), torch.randn(INFORMER_BATCH, 24, 7)
    x_mark, y_mark = torch.randn(INFORMER_BATCH, 48, 4), torch.randn(INFORMER_BATCH, 72, 4)
    return median_step(model, lambda: nn.functional.mse_loss(model(x, x_mark, y_mark), y), steps)


MODELS: dict[str, Callable[[type[nn.Dropout], int, int], float]] = {
    "generator": generator_steps,
    "informer d_model 64": lambda dropout, steps, seed: informer_steps(dropout, steps, seed, 64),
    "informer d_model 128": lambda dropout, steps, seed: informer_steps(dropout, steps, seed, 128),
}


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
    parser.add_argument("--steps", type=int, default=12, help="training steps per round and model")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "dropout.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_start = os.getloadavg()
    steps: dict[str, dict[str, list[float]]] = {model: {name: [] for name in VARIANTS} for model in MODELS}
    for round_ in range(args.rounds):
        order = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
        for model, train_steps in MODELS.items():
            for name in order:
                steps[model][name].append(train_steps(VARIANTS[name], args.steps, round_))
    shapes = {"hidden (256, 21, 128)": (256, 21, 128), "feed-forward (256, 21, 512)": (256, 21, 512)}
    modules = {
        label: {name: module_seconds(cls(0.1).train(), shape, 30) * 1e3 for name, cls in VARIANTS.items()}
        for label, shape in shapes.items()
    }
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
            "generator": "d_model 128, d_ff 512, 4 heads, 2 + 2 layers, item-level encoder, dropout 0.1, "
            f"batch {BATCH} of {ITEMS}-item histories",
            "informer": "d_model 64 and 128 (d_ff 4x), 8 heads, 1 + 1 layers, ProbSparse, lookback 48, label 48, "
            f"horizon 24, 7 channels, dropout 0.05, batch {INFORMER_BATCH}",
            "rounds": args.rounds,
            "steps_per_round": args.steps,
        },
        "step_ms": {model: {name: float(np.median(v)) * 1e3 for name, v in by.items()} for model, by in steps.items()},
        "step_ms_per_round": {
            model: {name: [round(s * 1e3, 2) for s in v] for name, v in by.items()} for model, by in steps.items()
        },
        "step_speedup": {model: float(np.median(by[BASE]) / np.median(by[OURS])) for model, by in steps.items()},
        "module_forward_backward_ms": modules,
        "load_average_at_end": os.getloadavg(),
    }
    atomic_write_text(Path(args.out), json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("step_ms", "step_speedup", "module_forward_backward_ms")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
