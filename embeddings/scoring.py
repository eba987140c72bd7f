"""Verification scores: equal error rate and minimum detection cost from scikit-learn's ROC."""

from __future__ import annotations

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


def all_pairs(labels: np.ndarray, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j): all of them, or ``max_pairs`` sampled with all same-speaker pairs kept first."""
    labels = np.asarray(labels)
    first, second = np.triu_indices(len(labels), k=1)
    rows = sample_pairs(labels[first] == labels[second], max_pairs, np.random.default_rng(seed))
    return first[rows], second[rows]


def sample_pairs(same: np.ndarray, max_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of at most ``max_pairs`` pairs (``same``: which are same-speaker), sorted: all of them, or up to
    half same-speaker pairs and the rest different-speaker ones, either kind filling what the other lacks."""
    if len(same) <= max_pairs:
        return np.arange(len(same))
    same_rows, other_rows = np.flatnonzero(same), np.flatnonzero(~same)
    n_same = min(len(same_rows), max(max_pairs // 2, max_pairs - len(other_rows)))
    if n_same < len(same_rows):
        same_rows = rng.choice(same_rows, n_same, replace=False)
    return np.sort(np.concatenate([same_rows, rng.choice(other_rows, max_pairs - n_same, replace=False)]))
