"""PNG plots of a run (or of several runs overlaid), with matplotlib's Agg backend (no display).

Each panel is a small function `panel(ax, runs)` that draws on one axis, so the same drawing
makes the single PNGs (`--plot`), the overview grid (README, HTML) and the comparisons
(`--compare`: every run is one line).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lmmixup.data.jsonl import atomic_open  # noqa: E402
from lmmixup.inspect.load import RunData  # noqa: E402


def _line(ax, run: RunData, key: str, label: str, **kw) -> bool:
    pts = run.series(key)
    if not pts:
        return False
    ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", markersize=3, label=label, **kw)
    return True


def _label(runs: Sequence[RunData], run: RunData, what: str) -> str:
    return what if len(runs) == 1 else f"{run.name}: {what}"


def panel_rewards(ax, runs: Sequence[RunData]) -> None:
    for run in runs:
        _line(ax, run, "reward/total_mean", _label(runs, run, "total"), linewidth=2.2)
        for name in run.reward_names():
            _line(ax, run, f"reward/{name}_mean", _label(runs, run, name))
        if run.evals:
            ax.plot([e["step"] for e in run.evals], [e["eval/total_mean"] for e in run.evals],
                    "k*", markersize=9, label=_label(runs, run, "held-out total"))
    ax.set_title("rewards (batch means)")


def panel_kl(ax, runs):
    for run in runs:
        _line(ax, run, "grpo/kl", _label(runs, run, "KL to reference"))
    ax.set_title("KL (nats / token)")


def panel_entropy(ax, runs):
    for run in runs:
        _line(ax, run, "grpo/entropy", _label(runs, run, "entropy"))
    ax.set_title("token entropy (nats)")


def panel_length(ax, runs):
    for run in runs:
        _line(ax, run, "rollout/completion_len_mean", _label(runs, run, "mean length"))
    ax.set_title("completion length (tokens)")


def panel_clip(ax, runs):
    for run in runs:
        _line(ax, run, "grpo/clip_frac_low", _label(runs, run, "clip low"))
        _line(ax, run, "grpo/clip_frac_high", _label(runs, run, "clip high"))
        _line(ax, run, "rollout/frac_truncated", _label(runs, run, "truncated"), linestyle="--")
    ax.set_title("clipped / truncated fraction")


def panel_attribution(ax, runs):
    """One run: a stacked area of each reward's share of sum |A_ik|. Several: lines."""
    for run in runs:
        names = [n for n in run.reward_names() if run.series(f"attr/{n}_abs_share")]
        if len(runs) == 1 and names:
            steps = [s for s, _ in run.series(f"attr/{names[0]}_abs_share")]
            shares = [[dict(run.series(f"attr/{n}_abs_share")).get(s, 0.0) for s in steps]
                      for n in names]
            ax.stackplot(steps, shares, labels=names, alpha=0.8)
            ax.set_ylim(0, 1)
        else:
            for n in names:
                _line(ax, run, f"attr/{n}_abs_share", _label(runs, run, n))
    ax.set_title("advantage share per reward, sum|A_ik|")


PANELS: Dict[str, Callable] = {
    "rewards": panel_rewards,
    "kl": panel_kl,
    "entropy": panel_entropy,
    "length": panel_length,
    "clip": panel_clip,
    "attribution": panel_attribution,
}


def _finish(ax) -> None:
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not ax.collections or ax.lines:  # stackplots have no offset to turn off
        ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def figure(names: Sequence[str], runs: Sequence[RunData], cols: int = 3):
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, min(cols, len(names)), figsize=(5 * min(cols, len(names)), 3.6 * rows),
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        PANELS[name](ax, runs)
        _finish(ax)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def save_png(fig, path: Path) -> Path:
    """Atomic: write a temporary file and rename it."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
    return path


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=90, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_plots(runs: Sequence[RunData], out_dir: Path) -> List[Path]:
    """inspect_<panel>.png for every panel plus inspect_overview.png (all six)."""
    paths = [save_png(figure([name], runs, cols=1), out_dir / f"inspect_{name}.png")
             for name in PANELS]
    paths.append(save_png(figure(list(PANELS), runs), out_dir / "inspect_overview.png"))
    return paths
