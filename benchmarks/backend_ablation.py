"""Which scoring back end identifies best among *all* enrolled speakers? An ablation on one trained model.

For every back end (none, center, lda, plda) with and without AS-norm, it builds the speaker index the
way ``voxaug embed --index`` does, enrols the unseen speakers as ``voxaug enroll`` does, and reports:

- unseen top-1 among all enrolled speakers (newcomers and trained speakers together), and among the
  newcomers alone;
- trained speakers' test clips (``testdata.json`` with ``test_labels.csv``) among all enrolled;
- verification EER and minDCF on the run's validation split;
- open set: the threshold at ``--target-far`` (1%) picked on the newcomers' test clips (as ``evaluate --calibrate``
  does), the share of those clips accepted at it and the detection-and-identification rate (DIR), and
  the share of impostor clips (speakers never enrolled) answered unknown.

Embeddings are computed once; each arm only re-scores them. Given several checkpoints (models of the same
data, such as seeds), it scores each in turn and the JSON holds one run per model, rendered with the
per-model figures and their means.

    python benchmarks/backend_ablation.py demo/data --ckpt demo/run/best.pt --json backend.json
    python benchmarks/backend_ablation.py demo/data --ckpt demo/run/best.pt runs/default-seed1/best.pt --json seeds.json
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from voxaug.checkpoint import load_checkpoint, load_model
from voxaug.data.audio_store import open_dataset_store
from voxaug.data.sources import open_source
from voxaug.embeddings.calibration import calibrate, open_set_scores
from voxaug.embeddings.embedders import CheckpointEmbedder
from voxaug.embeddings.evaluation import LabelledEmbeddings, TrialScorer, embed_folder, score_pairs, validation_split
from voxaug.embeddings.extract import embed_store
from voxaug.embeddings.index import SpeakerIndex
from voxaug.embeddings.speaker_index import ScoringOptions, build_speaker_index
from voxaug.safeio import atomic_write_json
from report import far_rate, folder_name, json_output, percent

ARMS = [("none", "none"), ("center", "none"), ("lda", "none"), ("plda", "none"), ("none", "asnorm"),
        ("center", "asnorm"), ("lda", "asnorm"), ("plda", "asnorm")]


def embed_everything(ckpt: Path, data: Path, cache: Path | None) -> dict:
    device = torch.device("cpu")
    loaded = load_model(ckpt, device)
    store, _ = open_dataset_store(open_source(data, loaded.frontend), cache, progress=False)  # as `embed` opens DATA
    train = embed_store(loaded.model, store, np.arange(len(store)), device, progress=False)
    names = np.array(store.speakers)[store.labels]
    test_source = open_source(data, loaded.frontend, split="test", warn=False)  # its clip folders warned above
    test, _ = open_dataset_store(test_source, cache, progress=False, strict=True)
    truth = dict(list(csv.reader(open(data / "test_labels.csv", encoding="utf-8")))[1:])
    tested = embed_store(loaded.model, test, np.arange(len(test)), device, progress=False)
    found = {"model": loaded, "train": LabelledEmbeddings(train.embeddings, names), "groups": store.groups,
             "rows": validation_split(CheckpointEmbedder(loaded, device), store),  # the run's own, as evaluate's
             "test": LabelledEmbeddings(tested.embeddings, np.array([truth[k] for k in test.keys]))}
    unseen = data / "unseen"
    for part in ("enroll", "test", "impostors"):
        if (unseen / part).is_dir():
            found[f"unseen_{part}"] = embed_folder(CheckpointEmbedder(loaded, device), unseen / part, cache, False)
    if "unseen_impostors" not in found and (data / "impostors").is_dir():  # benchmarks/crosscheck.py's layout
        found["unseen_impostors"] = embed_folder(CheckpointEmbedder(loaded, device), data / "impostors", cache, False)
    return found


def enrolled_index(found: dict, backend: str, score_norm: str) -> SpeakerIndex:
    """The index `embed --index` builds from the training speakers, with the newcomers enrolled as `enroll` does."""
    config = found["model"].config
    train = found["train"]
    index = build_speaker_index(train.embeddings, train.labels.tolist(), found["groups"], "speaker", False, {}, {},
                                config.seed, config.val_fraction, ScoringOptions(backend, score_norm=score_norm),
                                found["model"].speakers, config.split_version, rows=found["rows"])
    enrolled = found["unseen_enroll"]
    for speaker in sorted(set(enrolled.labels.tolist())):
        index.add(speaker, enrolled.embeddings[enrolled.labels == speaker])
    return index


def run_arm(found: dict, backend: str, score_norm: str, target_far: float) -> dict:
    config = found["model"].config
    train = found["train"]
    index = enrolled_index(found, backend, score_norm)
    enrolled = found["unseen_enroll"]
    unseen = found["unseen_test"]
    first = index.search(unseen.embeddings, 1)  # the answer identify gives, and its score
    ranked = index.search(unseen.embeddings, len(index.labels))  # every entry, for the narrower questions
    newcomers = set(enrolled.labels.tolist())
    answers = np.array([hits[0][0] for hits in first])
    tested = np.array([hits[0][0] for hits in index.search(found["test"].embeddings, 1)])
    kept, held_out = found["rows"]
    validation = LabelledEmbeddings(train.embeddings[held_out], train.labels[held_out])
    reference = LabelledEmbeddings(train.embeddings[kept], train.labels[kept])  # evaluate's fallback: one clip a speaker
    row = {"backend": backend, "score_norm": score_norm, "enrolled": len(index.labels),
           "unseen_among_all": float(np.mean(answers == unseen.labels)),
           "unseen_among_newcomers": float(np.mean([next(s for s, _ in hits if s in newcomers) == label
                                                    for hits, label in zip(ranked, unseen.labels)])),
           "trained_test_among_all": float(np.mean(tested == found["test"].labels)),
           **wrong_answers(answers, ranked, unseen.labels)}
    verification = score_pairs(validation, 20000, config.seed, reference,
                               TrialScorer(index, score_norm, target_far) if backend != "none" or score_norm != "none"
                               else TrialScorer(target_far=target_far))
    row.update(eer=verification["eer"], min_dcf=verification["min_dcf"])
    scores = open_set_scores(index, unseen.embeddings, unseen.labels.tolist(), score_norm)
    record = calibrate(scores, target_far, score_norm, "unseen speakers' test clips")  # as evaluate --calibrate
    row.update(threshold=record["value"], predicted_acceptance=record["acceptance"], dir=record["dir"])
    unseen_best = np.array([hits[0][1] for hits in first])
    row["unseen_accepted"] = float((unseen_best >= record["value"]).mean())
    if "unseen_impostors" in found:
        best = np.array([r[0][1] for r in index.search(found["unseen_impostors"].embeddings, 1)])
        row["impostors_unknown"] = float((best < record["value"]).mean())
    return row


def wrong_answers(answers: np.ndarray, ranked: list[list[tuple[str, float]]], labels: np.ndarray) -> dict:
    """Where newcomers' clips go wrong: how many distinct entries win them (a few 'hub' entries, or many), and
    the mean score against the clip's own entry beside the best other entry's (``ranked``: every entry per clip)."""
    winners = answers[answers != labels]
    own = [next(score for speaker, score in hits if speaker == label) for hits, label in zip(ranked, labels)]
    other = [next(score for speaker, score in hits if speaker != label) for hits, label in zip(ranked, labels)]
    return {"unseen_wrong": len(winners), "unseen_wrong_winners": len(set(winners.tolist())),
            "unseen_own_score": float(np.mean(own)), "unseen_best_other_score": float(np.mean(other))}


def machine() -> str:
    """Where the numbers were measured: CPU count and platform."""
    return f"{os.cpu_count()} CPU cores, {platform.platform()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a voxaug synth folder (or any HW4 folder with unseen/{enroll,test})")
    parser.add_argument("--ckpt", type=Path, nargs="+", required=True, help="one model, or several of the same data")
    parser.add_argument("--cache-dir", type=folder_name)
    parser.add_argument("--target-far", type=far_rate, default=0.01)
    parser.add_argument("--json", type=json_output)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    runs = []
    for ckpt in args.ckpt:
        found = embed_everything(ckpt, args.data, args.cache_dir)
        config = found["model"].config
        rows = [run_arm(found, backend, norm, args.target_far) for backend, norm in ARMS]
        augment = ",".join(config.augment.get("names", [])) or "none"
        saved = load_checkpoint(ckpt)
        runs.append({"checkpoint": str(ckpt), "augment": augment, "seed": config.seed, "step": saved["step"],
                     "best_step": saved.get("best_step"), "best_val_acc": saved.get("best_val_acc"), "rows": rows})
        print(f"{ckpt}\n| back end | score | unseen among all {rows[0]['enrolled']} | unseen among newcomers "
              f"| trained test among all | EER | minDCF | DIR at FAR {percent(args.target_far)} | impostors unknown |\n"
              "|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['backend']} | {r['score_norm']} | {r['unseen_among_all']:.3f} | {r['unseen_among_newcomers']:.3f} | "
                  f"{r['trained_test_among_all']:.3f} | {r['eer']:.3f} | {r['min_dcf']:.3f} | {r['dir']:.3f} | "
                  f"{r.get('impostors_unknown', float('nan')):.3f} |")
    if args.json:
        record = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "data": str(args.data),
                  "target_far": args.target_far}
        if len(runs) == 1:
            record.update(checkpoint=runs[0]["checkpoint"], rows=runs[0]["rows"])
        else:
            record.update(command="python benchmarks/backend_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv),
                          runs=runs)
        atomic_write_json(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
