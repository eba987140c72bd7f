"""Does AS-norm lower EER *and* minDCF with any cohort a training set can offer? A sweep on one model.

AS-norm is scored here on trials between speakers the network never trained on (the unseen
newcomers' enrolment and test clips and the impostors, all pairs), so the cohort, drawn from the
training speakers, is disjoint from every trial's speakers as it would be in use. Each cohort
source is tried at several top-K sizes, in the raw embedding space and in the LDA back end's space:

- ``validation``: the run's validation-split utterances (what ``voxaug embed`` stores);
- ``training``: the training-split utterances (memorised by the network);
- ``centroids``: one mean vector per training speaker.

    python benchmarks/asnorm_cohorts.py --ckpt demo/run/best.pt demo/data --json asnorm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from backend_ablation import embed_everything
from voxaug.data.split import stratified_split
from voxaug.embeddings.backend import Cohort, ScoringBackend
from voxaug.embeddings.scoring import eer_and_min_dcf

TOP_KS = (10, 20, 50, 100, 300)


def cohorts(space: np.ndarray, labels: np.ndarray, train: np.ndarray, held_out: np.ndarray) -> dict[str, Cohort]:
    """Every cohort source as unit vectors in the scoring space, without its top-K (set per arm)."""
    speakers = np.unique(labels)
    means = np.stack([space[labels == s].mean(axis=0) for s in speakers])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    return {"validation": Cohort(space[held_out], labels[held_out].tolist()),
            "training": Cohort(space[train], labels[train].tolist()),
            "centroids": Cohort(means.astype(np.float32), speakers.tolist())}


def sweep(found: dict, backend_kind: str) -> list[dict]:
    config = found["model"].config
    train_data = found["train"]
    labels = np.asarray(train_data.labels)
    codes = np.unique(labels, return_inverse=True)[1]
    train, held_out = stratified_split(codes, config.val_fraction, config.seed, found["groups"])
    backend = ScoringBackend.fit(backend_kind, train_data.embeddings[train], labels[train])
    parts = [found[k] for k in ("unseen_enroll", "unseen_test", "unseen_impostors") if k in found]
    trial_vectors = backend.apply(np.concatenate([p.embeddings for p in parts]))
    trial_labels = np.concatenate([np.asarray(p.labels) for p in parts])
    first, second = np.triu_indices(len(trial_labels), k=1)
    same = trial_labels[first] == trial_labels[second]
    scores = np.einsum("ij,ij->i", trial_vectors[first], trial_vectors[second])
    plain = eer_and_min_dcf(scores, same)
    rows = [{"backend": backend_kind, "cohort": "none", "top_k": 0, "eer": plain["eer"], "min_dcf": plain["min_dcf"],
             "trials": plain["trials"], "same_trials": plain["same_trials"]}]
    for name, cohort in cohorts(backend.apply(train_data.embeddings), labels, train, held_out).items():
        for top_k in TOP_KS:
            if top_k > len(cohort.labels):
                continue
            cohort.top_k = top_k
            mean, std = cohort.stats(trial_vectors)
            normed = 0.5 * ((scores - mean[first]) / std[first] + (scores - mean[second]) / std[second])
            result = eer_and_min_dcf(normed, same)
            rows.append({"backend": backend_kind, "cohort": name, "top_k": top_k, "eer": result["eer"],
                         "min_dcf": result["min_dcf"], "trials": result["trials"], "same_trials": result["same_trials"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a folder with unseen/{enroll,test} (voxaug synth or crosscheck.py build)")
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    found = embed_everything(args.ckpt, args.data, args.cache_dir)
    rows = sweep(found, "none") + sweep(found, "lda")
    print(f"unseen-speaker trials: {rows[0]['trials']} ({rows[0]['same_trials']} same-speaker)\n"
          "| back end | cohort | top-K | EER | minDCF |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['cohort']} | {r['top_k'] or '-'} | {r['eer']:.3f} | {r['min_dcf']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, "
                                         f"{platform.platform()}", "checkpoint": str(args.ckpt), "data": str(args.data),
                                         "rows": rows}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
