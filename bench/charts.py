"""Charts of the benchmark results for the README: what a reader would rather look at than read in a table.

Written as SVG (text stays text, so the file diffs and renders on GitHub) with a fixed hash salt and no date, so
the same results give the same bytes. Used by ``bench/leaderboard.py --readme``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never a window, and no display needed on a server

import matplotlib.pyplot as plt

from arcast_core.files import atomic_write

BASELINES = ("naive", "seasonal_naive", "linear")
# What a user would pick instead in greys, the papers' figures dashed, ours in colour.
STYLE: dict[str, dict[str, Any]] = {
    "naive": {"color": "0.65", "marker": "v", "label": "last value"},
    "seasonal_naive": {"color": "0.45", "marker": "s", "label": "seasonal naive"},
    "linear": {"color": "0.1", "marker": "o", "label": "linear (ridge)"},
}
OURS_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:cyan")


def _style(model: str, ours: list[str]) -> dict[str, Any]:
    if model in STYLE:
        return {**STYLE[model], "linewidth": 1.4}
    if model.endswith("-paper"):
        return {"color": "0.3", "marker": "x", "linestyle": "--", "linewidth": 1.0, "label": model}
    colour = OURS_COLOURS[ours.index(model) % len(OURS_COLOURS)]
    return {"color": colour, "marker": "D", "markersize": 4, "linewidth": 1.8, "label": model}


def leaderboard_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per protocol, dataset and features: test MSE by horizon (log scale) for every model kind."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if isinstance(row["horizon"], int):  # not the papers' averages
            groups.setdefault((row["protocol"], row["dataset"], row["features"]), []).append(row)
    keys = sorted(groups)
    ours = sorted({r["model"] for r in rows if r["model"] not in STYLE and not r["model"].endswith("-paper")})
    columns = 3
    lines = -(-len(keys) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.2 * lines), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        group = groups[key]
        horizons = sorted({r["horizon"] for r in group})
        for model in sorted({r["model"] for r in group}, key=lambda m: (m not in BASELINES, m)):
            points = sorted((r["horizon"], r["mse"]) for r in group if r["model"] == model)
            ax.plot(
                [horizons.index(h) for h, _ in points], [mse for _, mse in points], **_style(model, ours), alpha=0.9
            )
        ax.set_xticks(range(len(horizons)), [str(h) for h in horizons])
        ax.set_yscale("log")
        ax.set_title(f"{key[0]} protocol: {key[1]} {key[2]}", fontsize=10)
        ax.set_xlabel("horizon (steps)", fontsize=8)
        ax.set_ylabel("test MSE (standardised)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="both", alpha=0.25)
    for ax in axes.flat[len(keys) :]:
        ax.axis("off")
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle(
        "Test MSE by horizon: ours (colour) beside what a user would pick instead (grey) and the papers (dashed)"
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    save_svg(fig, path)


def save_svg(fig: Any, path: Path) -> None:
    """``fig`` as SVG at ``path``, written atomically; the same figure gives the same bytes."""
    with plt.rc_context({"svg.hashsalt": "arcast", "svg.fonttype": "none"}):
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="svg", metadata={"Date": None}))
    plt.close(fig)
