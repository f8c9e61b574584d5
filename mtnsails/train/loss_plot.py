"""The loss curve a trained model directory carries as `loss.png`."""

from __future__ import annotations

from pathlib import Path


def plot_loss(history: list[dict], path: Path) -> str | None:
    """Write train/eval loss per step to `path`; return a note instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return "note: matplotlib is not installed, so loss.png was skipped (pip install matplotlib)"
    figure, axes = pyplot.subplots(figsize=(7, 4))
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        points = [(entry["step"], entry[key]) for entry in history if key in entry]
        if points:
            axes.plot(*zip(*points), marker="o" if key == "eval_loss" else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return None
