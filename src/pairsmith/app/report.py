"""``pairsmith report``: PNG plots of a run's CSV logs (matplotlib, Agg backend).

Every invocation of ``train`` (the first one and each ``--resume``) writes its own
``logs/version_N/metrics.csv``; they are merged by step, a later version replacing the steps it
repeats (a resumed run re-does the steps after its checkpoint). One PNG per metric: ``loss``,
``knn_top1`` (against epochs), ``lr``, every ``train/*`` log of the method and every ``diag/*``
pair diagnostic; plus ``summary.png`` with the loss, kNN accuracy and the diagnostics together.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

Series = dict[str, list[tuple[float, float]]]


def _version(p: Path) -> int:
    m = re.search(r"version_(\d+)", str(p))
    return int(m.group(1)) if m else -1


def read_metrics(run_dir: str | Path) -> tuple[Series, dict[int, float]]:
    """Merge every ``metrics.csv`` of a run.

    Returns:
        ``(series, epoch_of_step)``: metric name to sorted ``(step, value)`` pairs (one value
        per step, the latest version winning), and the epoch at each logged step.

    Raises:
        FileNotFoundError: if the run has no ``metrics.csv``.
    """
    files = sorted(Path(run_dir).glob("logs/version_*/metrics.csv"), key=_version)
    if not files:
        raise FileNotFoundError(f"no logs/version_*/metrics.csv under {run_dir}")
    by_metric: dict[str, dict[int, float]] = {}
    epochs: dict[int, float] = {}
    for f in files:
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                step_s = row.get("step", "")
                if not step_s:
                    continue
                step = int(float(step_s))
                if row.get("epoch"):
                    epochs[step] = float(row["epoch"])
                for k, v in row.items():
                    if k in ("step", "epoch") or v in ("", None):
                        continue
                    try:
                        value = float(v)
                    except ValueError:
                        continue
                    by_metric.setdefault(k, {})[step] = value
    series = {k: sorted(d.items()) for k, d in by_metric.items()}
    return {k: [(float(s), v) for s, v in pts] for k, pts in series.items()}, epochs


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _plottable(series: Series) -> list[str]:
    first = ["loss", "knn_top1", "lr"]
    names = [n for n in first if n in series]
    names += sorted(n for n in series if n.startswith("train/"))
    names += sorted(n for n in series if n.startswith("diag/"))
    names += sorted(n for n in series if n.startswith("time/"))
    return names


def _x(
    name: str, pts: list[tuple[float, float]], epochs: dict[int, float]
) -> tuple[list[float], str]:
    if name == "knn_top1" or name.startswith("time/"):
        # Epoch-end values: plot them against the (1-based) epoch that ended.
        return [epochs.get(int(s), math.nan) + 1 for s, _ in pts], "epoch"
    return [s for s, _ in pts], "step"


def write_plots(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write one PNG per metric and ``summary.png``.

    Args:
        run_dir: the run directory.
        out_dir: where to write (default ``RUN_DIR/plots``).

    Returns:
        The written files.

    Raises:
        FileNotFoundError: if the run has no logs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series, epochs = read_metrics(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    # Metrics never defined for this method (all NaN, e.g. NN precision without a queue) are
    # left out; one figure is reused for the per-metric files (figure creation dominates).
    names = [n for n in _plottable(series) if any(math.isfinite(v) for _, v in series[n])]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.15, top=0.9)  # fixed: no layout pass
    for name in names:
        pts = series[name]
        xs, xlabel = _x(name, pts, epochs)
        ax.clear()
        ax.plot(xs, [v for _, v in pts], marker="o" if len(pts) < 40 else None, lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        path = out / f"{_safe(name.replace('/', '__'))}.png"
        fig.savefig(path, dpi=90)
        written.append(path)
    plt.close(fig)
    summary = [n for n in names if not n.startswith("time/") and n != "lr"]
    if summary:
        cols = min(3, len(summary))
        rows = math.ceil(len(summary) / cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(4.5 * cols, 3 * rows), squeeze=False, layout="constrained"
        )
        cells = list(axes.flat)
        for cell, name in zip(cells, summary, strict=False):
            pts = series[name]
            xs, xlabel = _x(name, pts, epochs)
            cell.plot(xs, [v for _, v in pts], lw=1)
            cell.set_title(name, fontsize=9)
            cell.set_xlabel(xlabel, fontsize=8)
            cell.grid(alpha=0.3)
        for cell in cells[len(summary) :]:
            cell.axis("off")
        path = out / "summary.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
