"""Accuracy curves: clean train vs validation accuracy over steps, for one run or several overlaid."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from voxaug.errors import file_error  # noqa: E402
from voxaug.safeio import atomic_output  # noqa: E402


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The evaluations logged in ``RUN/metrics.jsonl``, one dict per line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise file_error(path, "metrics log not found (is this a voxaug run folder?)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise file_error(path, f"line {number} is not JSON ({exc.msg})") from exc
    return rows


def plot_runs(run_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> None:
    """Train accuracy (solid) and validation accuracy (dashed) of each run, one colour per run."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for number, run_dir in enumerate(run_dirs):
        rows = read_metrics(run_dir)
        label = labels[number] if labels else Path(run_dir).name
        colour = f"C{number % 10}"
        steps = [r["step"] for r in rows]
        axis.plot(steps, [r["train_acc"] for r in rows], color=colour, label=f"{label} train")
        if any(r.get("val_acc") is not None for r in rows):
            axis.plot(steps, [r.get("val_acc") for r in rows], color=colour, linestyle="--", label=f"{label} val")
    axis.set_xlabel("step")
    axis.set_ylabel("accuracy")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("clean train vs validation accuracy (the gap is overfitting)")
    figure.tight_layout()
    with atomic_output(out, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
