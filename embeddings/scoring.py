"""Verification scores: equal error rate and minimum detection cost from scikit-learn's ROC."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from sklearn.metrics import roc_curve

from voxaug.errors import VoxaugError


def eer_and_min_dcf(scores: np.ndarray, same: np.ndarray, p_target: float = 0.01, target_far: float = 0.01) -> dict:
    """EER (the mean of the two error rates where they are closest), its threshold, the normalised minDCF (C_miss = C_fa = 1), and the threshold that keeps the
    false-alarm rate at or under ``target_far`` with the miss rate there, of same/different trials."""
    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    if same.all() or not same.any():
        raise VoxaugError("verification needs both same-speaker and different-speaker trials")
    # every distinct score as a threshold: the default thinning drops the collinear points among which
    # FAR = FRR and the lowest threshold within the target FAR often lie
    fpr, tpr, thresholds = roc_curve(same, scores, drop_intermediate=False)
    thresholds[0] = np.nextafter(scores.max(), np.inf)  # accept nothing: finite, so a report stays valid JSON
    fnr = 1 - tpr
    best = int(np.nanargmin(np.abs(fnr - fpr)))
    eer = float((fnr[best] + fpr[best]) / 2)
    dcf = p_target * fnr + (1 - p_target) * fpr
    min_dcf = float(dcf.min() / min(p_target, 1 - p_target))
    at_far = int(np.flatnonzero(fpr <= target_far)[-1])
    return {"eer": eer, "eer_threshold": float(thresholds[best]), "min_dcf": min_dcf, "p_target": p_target,
            "target_far": target_far, "far_threshold": float(thresholds[at_far]), "miss_at_far": float(fnr[at_far]),
            "trials": int(len(same)), "same_trials": int(same.sum())}


def all_pairs(labels: np.ndarray, max_pairs: int, seed: int,
              recordings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j): all of them, or ``max_pairs`` sampled as ``sample_ranks`` keeps them (up to half
    same-speaker pairs, either kind filling what the other lacks); none of two channels of one recording."""
    return labelled_pairs(labels, labels, max_pairs, np.random.default_rng(seed), upper=True,
                          row_recordings=recordings, column_recordings=recordings)


def labelled_pairs(row_labels: np.ndarray, column_labels: np.ndarray, max_pairs: int, rng: np.random.Generator,
                   upper: bool = False, row_recordings: np.ndarray | None = None,
                   column_recordings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (row i, column j), or only j > i with ``upper`` (pairs within one set), sampled as ``sample_pairs``
    samples them in row-major order, the very same pairs, without listing them all: N clips make N²/2 pairs,
    tens of gigabytes of indices and label copies past 20,000 validation clips, for a few thousand kept.

    Same-speaker pairs of two clips of one recording (``row_recordings[i] == column_recordings[j]``, not None:
    VCTK's ``_mic1`` and ``_mic2`` of one utterance) are left out: the same sound twice, a trial no speaker model can
    fail. Without such pairs the draws are those of a sampling that never heard of recordings."""
    if len(row_labels) == 0 or len(column_labels) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, codes = np.unique(np.concatenate([np.asarray(row_labels), np.asarray(column_labels)]), return_inverse=True)
    rows, columns = codes[: len(row_labels)], codes[len(row_labels):]
    n = len(columns)
    order = np.argsort(columns, kind="stable")  # column positions grouped by label, ascending within each
    grouped = columns[order]
    start = np.searchsorted(grouped, np.arange(codes.max() + 2))  # label k's columns: order[start[k]:start[k + 1]]
    first = np.arange(1, len(rows) + 1) if upper else np.zeros(len(rows), dtype=np.int64)  # row i's first column
    label_then_column = grouped * (n + 1) + order  # each label's columns in ascending order, searchable as one
    before = np.searchsorted(label_then_column, rows * (n + 1) + first) - start[rows]  # own label's, left of it
    same_count = start[rows + 1] - start[rows] - before
    other_count = n - first - same_count
    left_out = _one_recording_ranks(row_recordings, column_recordings, upper, rows, columns, before, same_count,
                                    label_then_column, start)
    same, other = sample_ranks(int(same_count.sum()) - len(left_out), int(other_count.sum()), max_pairs, rng)
    same = same + np.searchsorted(left_out - np.arange(len(left_out)), same, side="right")  # step over the left out
    i, k = _row_of(same, same_count)
    same_j = order[start[rows[i]] + before[i] + k]
    oi, ok = _row_of(other, other_count)
    wanted = first[oi] - before[oi] + ok  # the column is the (wanted+1)-th of another label, counted from 0
    gaps = order - (np.arange(n) - start[grouped])  # columns of other labels left of each of a label's own
    other_j = wanted + np.searchsorted(grouped * (n + 1) + gaps, rows[oi] * (n + 1) + wanted, side="right") \
        - start[rows[oi]]
    pairs = np.concatenate([i, oi]) * n + np.concatenate([same_j, other_j])
    pairs.sort()
    return pairs // n, pairs % n


def _one_recording_ranks(row_recordings: np.ndarray | None, column_recordings: np.ndarray | None, upper: bool,
                         rows: np.ndarray, columns: np.ndarray, before: np.ndarray,
                         same_count: np.ndarray, label_then_column: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Sorted ranks, among the same-speaker pairs counted row by row, of the pairs of two clips of one recording."""
    i, j = _one_recording_pairs(row_recordings, column_recordings, upper)
    keep = rows[i] == columns[j]
    i, j = i[keep], j[keep]
    within_row = np.searchsorted(label_then_column, rows[i] * (len(columns) + 1) + j) - start[rows[i]] - before[i]
    return np.unique((np.cumsum(same_count) - same_count)[i] + within_row)


def _one_recording_pairs(row_recordings: np.ndarray | None, column_recordings: np.ndarray | None,
                         upper: bool) -> tuple[np.ndarray, np.ndarray]:
    """(row i, column j) of each pair of clips of one recording (j > i with ``upper``)."""
    columns_of: dict[str, list[int]] = defaultdict(list)
    for j, recording in enumerate([] if row_recordings is None or column_recordings is None else column_recordings):
        if recording is not None:
            columns_of[recording].append(j)
    pairs = [(i, j) for i, recording in enumerate(row_recordings if columns_of else [])
             for j in columns_of.get(recording, []) if not upper or j > i]
    found = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return found[:, 0], found[:, 1]


def _row_of(ranks: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The row of each rank among pairs counted row by row, and its place within that row."""
    ends = np.cumsum(counts)
    row = np.searchsorted(ends, ranks, side="right")
    return row, ranks - (ends[row] - counts[row])


def sample_ranks(n_same: int, n_other: int, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Which same-speaker and which different-speaker pairs (by rank) to keep: all of them, or up to half
    ``max_pairs`` same-speaker pairs and the rest different-speaker ones, either kind filling what the other lacks."""
    if n_same + n_other <= max_pairs:
        return np.arange(n_same), np.arange(n_other)
    kept = min(n_same, max(max_pairs // 2, max_pairs - n_other))
    same = rng.choice(n_same, kept, replace=False) if kept < n_same else np.arange(n_same)
    return same, rng.choice(n_other, max_pairs - kept, replace=False)


def sample_pairs(same: np.ndarray, max_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of at most ``max_pairs`` pairs (``same``: which are same-speaker), sorted, as ``sample_ranks`` picks them."""
    same_rows, other_rows = np.flatnonzero(same), np.flatnonzero(~np.asarray(same))
    kept_same, kept_other = sample_ranks(len(same_rows), len(other_rows), max_pairs, rng)
    return np.sort(np.concatenate([same_rows[kept_same], other_rows[kept_other]]))
