"""Accuracy curves: clean train vs validation accuracy over steps, for one run or several overlaid."""

from __future__ import annotations

import json
import os
from pathlib import Path

from matplotlib.figure import Figure

from voxaug.errors import VoxaugError, counted, file_error, not_a_file
from voxaug.progress import print_warning
from voxaug.safeio import atomic_output, finite_number


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The evaluations logged in ``RUN/metrics.jsonl``, one dict per line. A last line cut short (a training killed
    while appending it, which ``--resume`` drops) is left out with a warning."""
    if Path(run_dir).exists() and not Path(run_dir).is_dir():  # RUN/metrics.jsonl given for RUN, say
        raise file_error(run_dir, "not a folder; expected a run folder (the one holding metrics.jsonl)")
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise file_error(path, not_a_file(path, "metrics log") if path.exists()
                         else "metrics log not found (is this a voxaug run folder?)")
    text = read_log_text(path)
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                print_warning(f"warning: {path}: line {number} is cut short (a killed run); left out")
                break
            raise file_error(path, f"line {number} is not JSON ({exc.msg})") from exc
        except (ValueError, RecursionError) as exc:  # a number of over 4300 digits; arrays nested thousands deep
            raise file_error(path, f"line {number} is not usable JSON ({str(exc).split(';')[0]})") from None
        if not (isinstance(row, dict) and all(finite_number(row.get(key)) for key in ("step", "train_acc"))
                and (row.get("val_acc") is None or finite_number(row["val_acc"]))):
            raise file_error(path, f"line {number}: not a metrics row (a JSON object with a step, train_acc and "
                                   "val_acc or null, finite numbers)")
        rows.append(row)
    return rows


def read_log_text(path: Path) -> str:
    """The metrics log as text; one that is not UTF-8 (rows are ASCII JSON) is damage, refused naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise file_error(path, f"not a metrics log: byte {exc.start} is not UTF-8 text") from None


def run_labels(run_dirs: list[str | Path]) -> list[str]:
    """Each run's folder name, or parent/name where two runs share a folder name."""
    names = [Path(r).name for r in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{Path(r).parent.name}/{Path(r).name}" for r in run_dirs]


def drawable(label: str) -> str:
    """``label`` with the undecodable bytes of a file name (``os.fsdecode``'s surrogates) shown as U+FFFD: matplotlib
    refuses to draw a string that holds them. One that starts with ``_`` gets a leading space: matplotlib leaves such
    a label's curve out of the legend. A ``$`` is escaped: two would make the text between them TeX math, which a run
    folder's name or a label is not (and ``$\\foo$`` failed to draw)."""
    text = os.fsencode(label).decode("utf-8", errors="replace").replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text


FIGURE_FORMATS = ("png", "pdf", "svg")


def figure_format(out: str | Path) -> str:
    """The image format ``out``'s suffix names: a PNG written to ``curves.txt`` would be a file nothing opens."""
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in FIGURE_FORMATS:
        raise file_error(out, f"--out names the figure's format by its suffix: .{', .'.join(FIGURE_FORMATS)}, "
                              f"got {('.' + suffix) if suffix else 'none'}")
    return suffix


def plot_runs(run_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> list[list[dict]]:
    """Left: train accuracy (solid) and validation accuracy (dashed) of each run, one colour per run.
    Right: the gap (train - validation) of each run, the overfitting that augmentation should shrink.
    Returns each run's metrics rows, as plotted."""
    if labels is not None and len(labels) != len(run_dirs):
        raise VoxaugError(f"--labels: got {counted(len(labels), 'label')} for {counted(len(run_dirs), 'run')}")
    image_format = figure_format(out)
    labels = [drawable(label) for label in labels or run_labels(run_dirs)]
    runs = [read_metrics(run_dir) for run_dir in run_dirs]  # before a figure is opened: a bad log leaves none open
    for run_dir, rows in zip(run_dirs, runs):
        if not rows:  # an empty figure, or one missing this run, would be written with exit 0
            raise file_error(Path(run_dir) / "metrics.jsonl", "holds no metrics rows yet (a run logs one at each "
                                                              "evaluation, every --eval-every steps)")
    figure = Figure(figsize=(11, 4.5))  # not pyplot: its backend and figure list belong to the caller's process
    accuracy_axis, gap_axis = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    for number, rows in enumerate(runs):
        colour = f"C{number % 10}"
        steps = [r["step"] for r in rows]
        accuracy_axis.plot(steps, [r["train_acc"] for r in rows], color=colour, marker=".", label=f"{labels[number]} train")
        validated = [r for r in rows if r.get("val_acc") is not None]
        if validated:
            accuracy_axis.plot([r["step"] for r in validated], [r["val_acc"] for r in validated], color=colour,
                               linestyle="--", marker=".", label=f"{labels[number]} val")
            gap_axis.plot([r["step"] for r in validated], [r["train_acc"] - r["val_acc"] for r in validated],
                          color=colour, marker=".", label=f"{labels[number]} ({validated[-1]['train_acc'] - validated[-1]['val_acc']:+.3f})")
    accuracy_axis.set_xlabel("step")
    accuracy_axis.set_ylabel("accuracy")
    accuracy_axis.set_ylim(0, 1.02)
    accuracy_axis.grid(alpha=0.3)
    accuracy_axis.legend(fontsize=8)
    accuracy_axis.set_title("clean train (solid) vs validation (dashed) accuracy")
    gap_axis.axhline(0, color="grey", linewidth=0.8)
    gap_axis.set_xlabel("step")
    gap_axis.set_ylabel("train - val accuracy")
    gap_axis.grid(alpha=0.3)
    if gap_axis.lines[1:]:
        gap_axis.legend(fontsize=8, title="final gap", title_fontsize=8)
    gap_axis.set_title("the gap (overfitting)")
    figure.tight_layout()
    with atomic_output(out, "wb") as handle:
        figure.savefig(handle, format=image_format, dpi=110)
    return runs
