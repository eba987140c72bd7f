"""Does the calibrated "unknown" threshold hold on clips it was not picked on? Two-fold cross-fitting.

`voxaug evaluate --calibrate` picks the threshold at a target false-alarm rate (FAR) from the enrolled
newcomers' test clips, and predicts the share of enrolled speakers' clips `identify` will accept at it
and the detection-and-identification rate (DIR). Scored on the clips it was picked on, as the demo's
last line does, the acceptance matches the prediction by construction. Here each newcomer's test clips
are split into two folds (alternate clips, in file order); the threshold is picked on one fold as
evaluate picks it, and the other fold's clips and the impostors (speakers never enrolled) are identified
at it, as `identify` would answer them. Each fold takes its turn; the index is built as `embed --index`
builds it (default back end PLDA, plain scores) with the newcomers enrolled as `enroll` does.

    python benchmarks/calibration_holdout.py demo/data --ckpt demo/run/last.pt --json holdout.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from voxaug.embeddings.calibration import calibrate, open_set_scores
from voxaug.embeddings.evaluation import LabelledEmbeddings
from voxaug.embeddings.index import SpeakerIndex
from voxaug.safeio import atomic_write_json
from backend_ablation import embed_everything, enrolled_index, machine
from report import far_rate, folder_name, json_output


def folds(clips: LabelledEmbeddings, count: int = 2) -> list[np.ndarray]:
    """Row indices of each fold: every speaker's clips dealt out in turn, so each fold holds every speaker."""
    position = np.zeros(len(clips.labels), dtype=int)
    for speaker in set(clips.labels.tolist()):
        rows = np.flatnonzero(clips.labels == speaker)
        position[rows] = np.arange(len(rows))
    return [np.flatnonzero(position % count == fold) for fold in range(count)]


def answered(index: SpeakerIndex, clips: LabelledEmbeddings, score_norm: str, threshold: float) -> dict:
    """What `identify` does with ``clips`` at ``threshold``: the share accepted, and right and accepted (DIR)."""
    best = index.search(clips.embeddings, 1, score_norm=score_norm)
    score = np.array([ranked[0][1] for ranked in best])
    right = np.array([ranked[0][0] for ranked in best]) == clips.labels
    return {"accepted": float((score >= threshold).mean()), "dir": float((right & (score >= threshold)).mean())}


def cross_fit(found: dict, backend: str, score_norm: str, target_far: float) -> list[dict]:
    index = enrolled_index(found, backend, score_norm)
    unseen = found["unseen_test"]
    rows = []
    parts = folds(unseen)
    for number, picked_on in enumerate(parts):
        held = np.concatenate([part for other, part in enumerate(parts) if other != number])
        fold = LabelledEmbeddings(unseen.embeddings[picked_on], unseen.labels[picked_on])
        record = calibrate(open_set_scores(index, fold.embeddings, fold.labels.tolist(), score_norm), target_far,
                           score_norm, f"fold {number}")
        observed = answered(index, LabelledEmbeddings(unseen.embeddings[held], unseen.labels[held]), score_norm,
                            record["value"])
        row = {"fold": number, "calibrated_on": int(len(picked_on)), "identified": int(len(held)),
               "threshold": record["value"], "predicted_acceptance": record["acceptance"],
               "held_out_acceptance": observed["accepted"], "predicted_dir": record["dir"],
               "held_out_dir": observed["dir"]}
        if "unseen_impostors" in found:
            strangers = found["unseen_impostors"]
            row["impostors"] = int(len(strangers.labels))
            row["impostors_unknown"] = 1 - answered(index, strangers, score_norm, record["value"])["accepted"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a voxaug synth folder (or any HW4 folder with unseen/{enroll,test})")
    parser.add_argument("--ckpt", type=Path, nargs="+", required=True, help="one model, or several of the same data")
    parser.add_argument("--backend", default="plda", choices=["none", "center", "lda", "plda"])
    parser.add_argument("--score-norm", default="none", choices=["none", "asnorm"])
    parser.add_argument("--target-far", type=far_rate, default=0.01)
    parser.add_argument("--cache-dir", type=folder_name)
    parser.add_argument("--json", type=json_output)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    runs = []
    print("| model | fold | threshold | predicted acceptance | held-out acceptance | predicted DIR | held-out DIR "
          "| impostors unknown |\n|---|---|---|---|---|---|---|---|")
    for ckpt in args.ckpt:
        found = embed_everything(ckpt, args.data, args.cache_dir)
        rows = cross_fit(found, args.backend, args.score_norm, args.target_far)
        runs.append({"checkpoint": str(ckpt), "seed": found["model"].config.seed, "rows": rows})
        for r in rows:
            print(f"| {ckpt} | {r['fold']} ({r['calibrated_on']} clips; {r['identified']} held out) | {r['threshold']:.3f} "
                  f"| {r['predicted_acceptance']:.3f} | {r['held_out_acceptance']:.3f} | {r['predicted_dir']:.3f} "
                  f"| {r['held_out_dir']:.3f} | {r.get('impostors_unknown', float('nan')):.3f} |")
    gaps = [abs(r["held_out_acceptance"] - r["predicted_acceptance"]) for run in runs for r in run["rows"]]
    print(f"held-out acceptance minus predicted: mean |gap| {np.mean(gaps):.3f}, largest {max(gaps):.3f} "
          f"over {len(gaps)} folds")
    if args.json:
        atomic_write_json(args.json, {
            "date": time.strftime("%Y-%m-%d"), "machine": machine(), "data": str(args.data),
            "command": "python benchmarks/calibration_holdout.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "backend": args.backend, "score_norm": args.score_norm, "target_far": args.target_far, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
