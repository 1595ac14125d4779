"""Charts of the benchmark results for the README: what a reader would rather look at than read in a table.

Written as SVG (text stays text, so the file diffs and renders on GitHub) with a fixed hash salt and no date, so
the same results give the same bytes. Drawn by the scripts that write those results: ``leaderboard.py --readme``,
``intervals.py --readme``, ``recsys.py --chart`` (and ``--collect``), ``serve_forecast.py`` and
``serve_recommend.py`` (after a run, or ``--chart``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never a window, and no display needed on a server

import matplotlib.pyplot as plt

from arcast_core.files import atomic_write

# What a user would pick instead in greys, the papers' figures dashed, ours in colour.
STYLE: dict[str, dict[str, Any]] = {
    "naive": {"color": "0.65", "marker": "v", "label": "last value"},
    "seasonal_naive": {"color": "0.45", "marker": "s", "label": "seasonal naive"},
    "linear": {"color": "0.1", "marker": "o", "label": "linear (ridge)"},
}
BASELINES = tuple(STYLE)
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
    panel_rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(panel_rows, columns, figsize=(4.2 * columns, 3.2 * panel_rows), squeeze=False)
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


def coverage_chart(
    rows: list[dict[str, Any]], kinds: tuple[str, ...], levels: tuple[float, ...], horizons: tuple[int, ...], path: Path
) -> None:
    """Prediction intervals: each model's test coverage minus the nominal level, in points, split conformal (open
    markers) beside adaptive (filled), one panel per features and horizon; the band is the ±2-point goal."""
    features = sorted({r["features"] for r in rows})
    fig, axes = plt.subplots(
        len(features), len(horizons), figsize=(5.2 * len(horizons), 3.3 * len(features)), squeeze=False
    )
    colours = dict(zip(levels, ("tab:blue", "tab:orange", "tab:green"), strict=False))
    for ax, (feature, horizon) in zip(axes.flat, [(f, h) for f in features for h in horizons], strict=True):
        ax.axhspan(-2, 2, color="0.9", zorder=0)
        ax.axhline(0, color="0.5", linewidth=0.8)
        shown = [k for k in kinds if any((r["model"], r["features"]) == (k, feature) for r in rows)]
        for i, kind in enumerate(shown):
            for j, level in enumerate(levels):
                for method, fill in (("split_conformal", "none"), ("adaptive", colours[level])):
                    cell = [
                        r
                        for r in rows
                        if (r["model"], r["features"], r["horizon"], r["method"], r["level"])
                        == (kind, feature, horizon, method, level)
                    ]
                    if not cell:
                        continue
                    ax.plot(
                        i + (j - (len(levels) - 1) / 2) * 0.22 + (0.07 if method == "adaptive" else -0.07),
                        100 * (cell[0]["coverage"] - level),
                        marker="o",
                        markersize=5,
                        markerfacecolor=fill,
                        markeredgecolor=colours[level],
                        linestyle="none",
                    )
        ax.set_xticks(range(len(shown)), shown, fontsize=8, rotation=20)
        ax.set_title(f"ETTh1 {feature}, horizon {horizon}", fontsize=10)
        ax.set_ylabel("coverage - nominal (points)", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="y", alpha=0.25)
    legend = [
        plt.Line2D([], [], marker="o", linestyle="none", color=c, markerfacecolor=fill, label=f"{label}, {level:.0%}")
        for level, c in colours.items()
        for label, fill in (("split conformal", "none"), ("adaptive", c))
    ]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    fig.suptitle("Interval coverage on every test window, minus the nominal level (grey band: within 2 points)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    save_svg(fig, path)


GENERATORS = ("tiger", "collab", "concat", "prorec")  # the code-writing kinds: the service's generative recommender


def recsys_chart(
    rows: list[dict[str, Any]],
    published: dict[str, dict[str, float]],
    curves: dict[str, list[tuple[int, float]]],
    path: Path,
) -> None:
    """Recommenders: every row's test Recall@10 per dataset beside the published figures (dashed), and the
    validation Recall@10 of the generator runs by training step (``curves``: label -> (step, recall) points)."""
    datasets = [d for d in ("beauty", "sports", "toys") if any(r["dataset"] == d for r in rows)]
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    for ax, dataset in zip(axes.flat, datasets, strict=False):
        ranked = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["recall@10"])
        colours = [
            "tab:blue" if r["model"].startswith(GENERATORS) else "tab:orange" if "sasrec" in r["model"] else "0.6"
            for r in ranked
        ]
        ax.barh(range(len(ranked)), [r["recall@10"] for r in ranked], color=colours)
        ax.set_yticks(range(len(ranked)), [r["model"] for r in ranked], fontsize=7)
        for (name, value), style in zip(published.get(dataset, {}).items(), ("--", ":"), strict=False):
            ax.axvline(value, color="k", linestyle=style, linewidth=1, label=f"{name} {value:.4f}")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{dataset.capitalize()}: test Recall@10, every test user", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(True, axis="x", alpha=0.25)
    for ax in axes.flat[len(datasets) : -1]:
        ax.axis("off")
    ax = axes.flat[-1]
    for label, points in curves.items():
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3, label=label)
    ax.set_title("Generators: validation Recall@10 by training step", fontsize=10)
    ax.set_xlabel("generator training steps", fontsize=8)
    ax.set_ylabel("validation Recall@10 (sampled users)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=6)
    fig.suptitle("Recommenders: generators (blue), SASRec (orange), no training (grey); the papers' figures dashed")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    save_svg(fig, path)


SERVERS = {  # the serving benchmarks' servers, as their results name them
    "on": ("arcast, batching on", "tab:blue"),
    "off": ("arcast, batching off", "tab:cyan"),
    "workers2": ("arcast, 2 workers", "tab:green"),
    "floor": ("bare gRPC floor", "0.35"),
    "floor_workers2": ("floor, 2 processes", "0.6"),
    "floor_aio": ("floor, grpc.aio", "0.8"),
}


def serving_chart(panels: dict[str, dict[str, dict[str, Any]]], title: str, path: Path) -> None:
    """Requests per second by concurrent clients for each server of a serving benchmark, one panel per scenario
    (``panels``: title -> the results' ``load``, clients -> server -> figures); over arcast's batching-on bar, its
    fraction of the bare floor."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (name, load) in zip(axes.flat, panels.items(), strict=True):
        clients = sorted(load, key=int)
        servers = [s for s in SERVERS if any(s in load[c] for c in clients)]
        width = 0.8 / len(servers)
        for j, server in enumerate(servers):
            label, colour = SERVERS[server]
            xs = [i + (j - (len(servers) - 1) / 2) * width for i in range(len(clients))]
            ys = [load[c].get(server, {}).get("rps", 0.0) for c in clients]
            ax.bar(xs, ys, width, color=colour, label=label)
            if server == "on":
                for x, y, c in zip(xs, ys, clients, strict=True):
                    if "floor_fraction" in load[c]["on"]:
                        fraction = f"{load[c]['on']['floor_fraction']:.2f}"
                        ax.annotate(fraction, (x, y), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(clients)), [f"{c} client{'s' if c != '1' else ''}" for c in clients])
        ax.set_ylabel("requests / s", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(True, axis="y", alpha=0.25)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{title}: requests/s side by side (over arcast's bars: its fraction of the bare floor)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    save_svg(fig, path)
