"""How high can the demo's among-all figure go at its budget? A ceiling: retrain with the newcomers as classes.

``voxaug embed --index`` and ``voxaug enroll`` identify a newcomer without retraining. The most the
same recipe could do with the same clips is to train on them. For each seed this

1. copies an HW4 folder (``voxaug synth``'s layout) and adds every ``unseen/enroll/<speaker>/`` clip as a
   training utterance of a class of its own;
2. trains ``voxaug train`` on the copy with the given steps and seed (the default recipe otherwise);
3. identifies the newcomers' ``unseen/test`` clips among all the speakers it now knows: by the softmax
   classifier (a closed set), and by an index of each speaker's training split as ``embed --index``
   builds it, with each newcomer enrolled from all its enrolment clips (the training split holds one
   back for validation; the compared arm enrols from all of them too), scored by cosine after the LDA
   back end and by the default PLDA back end;
4. with ``--compare RUN/best.pt`` (a model of the original folder, same steps and seed), scores the
   usual way too: that model's index, the newcomers enrolled from the same clips, with both back ends.

``--reuse`` keeps a ``run-seedS/best.pt`` already in the workdir instead of training it again.

    python benchmarks/retrain_ceiling.py demo/data --steps 2000 --seeds 2 --workdir ceiling --json ceiling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from backend_ablation import embed_everything, run_arm
from crosscheck import ArmFailed, run_voxaug
from voxaug.data.audio_store import open_dataset_store
from voxaug.data.sources import ClipFolderSource
from voxaug.embeddings.extract import embed_store
from voxaug.embeddings.speaker_index import ScoringOptions, build_speaker_index
from voxaug.safeio import atomic_write_json
from report import at_least, folder_name, json_output


def with_newcomers_as_classes(data: Path, out: Path) -> int:
    """A copy of the HW4 folder ``data`` whose metadata also lists each unseen/enroll/<speaker>/ as a speaker."""
    out.mkdir(parents=True, exist_ok=True)
    metadata = json.loads((data / "metadata.json").read_text(encoding="utf-8"))
    mapping = json.loads((data / "mapping.json").read_text(encoding="utf-8"))
    for path in data.iterdir():  # training and test utterances, testdata.json, test_labels.csv
        if path.is_file() and path.name not in ("metadata.json", "mapping.json"):
            shutil.copy2(path, out / path.name)
    added = 0
    for folder in sorted(p for p in (data / "unseen" / "enroll").iterdir() if p.is_dir()):
        rows = []
        for clip in sorted(folder.glob("*.pt")):
            name = f"uttr-{folder.name}-{clip.stem}.pt"
            shutil.copy2(clip, out / name)
            rows.append({"feature_path": name, "mel_len": int(torch.load(clip, weights_only=True).shape[0])})
        metadata["speakers"][folder.name] = rows
        mapping["speaker2id"][folder.name] = len(mapping["id2speaker"])
        mapping["id2speaker"][str(len(mapping["id2speaker"]))] = folder.name
        added += len(rows)
    (out / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    (out / "mapping.json").write_text(json.dumps(mapping), encoding="utf-8")
    return added


def ceiling(ckpt: Path, data: Path, newcomers_test: Path, cache: Path | None) -> dict:
    """Newcomers' test clips among every class of a model trained with them: softmax, cosine (LDA index) and PLDA."""
    found = embed_everything(ckpt, data, cache)
    loaded, train = found["model"], found["train"]
    store, _ = open_dataset_store(ClipFolderSource(newcomers_test, loaded.frontend), cache, progress=False)
    tested = embed_store(loaded.model, store, np.arange(len(store)), torch.device("cpu"), progress=False)
    truth = np.array([store.speakers[i] for i in store.labels])
    softmax = np.array(loaded.speakers)[tested.probabilities.argmax(axis=1)]
    result = {"classes": len(loaded.speakers), "unseen_softmax": float((softmax == truth).mean())}
    newcomers = sorted(set(truth.tolist()))
    for backend, key in (("lda", "cosine_lda"), ("plda", "plda")):
        index = build_speaker_index(train.embeddings, train.labels.tolist(), found["groups"], "speaker", False, {}, {},
                                    loaded.config.seed, loaded.config.val_fraction, ScoringOptions(backend),
                                    loaded.speakers, loaded.config.split_version, rows=found["rows"])
        for name in newcomers:  # from all their enrolment clips, as --compare enrols them (the split held one back)
            index.remove(name)
            index.add(name, train.embeddings[train.labels == name])
        answers = np.array([ranked[0][0] for ranked in index.search(tested.embeddings, 1)])
        trained = np.array([ranked[0][0] for ranked in index.search(found["test"].embeddings, 1)])
        result.update({f"unseen_{key}": float((answers == truth).mean()),
                       f"trained_test_{key}": float((trained == found["test"].labels).mean())})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a voxaug synth folder (HW4 layout with unseen/{enroll,test})")
    parser.add_argument("--steps", type=at_least(1), default=2000)
    parser.add_argument("--seeds", type=at_least(1), default=2)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--workdir", type=folder_name, required=True)
    parser.add_argument("--compare", type=Path, nargs="*", default=[],
                        help="best.pt of models trained on DATA itself, one per seed in order")
    parser.add_argument("--json", type=json_output)
    parser.add_argument("--reuse", action="store_true", help="keep a run-seedS/best.pt already in the workdir")
    args = parser.parse_args(argv)
    copy = args.workdir / "data"
    added = with_newcomers_as_classes(args.data, copy)
    print(f"{copy}: the training speakers plus {added} newcomer enrolment clips as classes of their own")
    rows = []
    for offset in range(args.seeds):
        seed = args.first_seed + offset
        run = args.workdir / f"run-seed{seed}"
        row: dict = {"seed": seed}
        if not (args.reuse and (run / "best.pt").is_file()):
            started = time.perf_counter()
            try:
                run_voxaug(["train", str(copy), "--out", str(run), "--steps", str(args.steps), "--eval-every", "200",
                            "--seed", str(seed), "--device", "cpu", "--quiet",
                            "--cache-dir", str(args.workdir / "cache")])
            except ArmFailed as failed:  # voxaug's own one-line error, as crosscheck.py shows it, not a traceback
                print(f"error: {failed}", file=sys.stderr)
                return 1
            row["train_s"] = round(time.perf_counter() - started)
        row.update(ceiling(run / "best.pt", copy, args.data / "unseen" / "test", args.workdir / "cache"))
        if offset < len(args.compare):
            found = embed_everything(args.compare[offset], args.data, args.workdir / "cache")
            usual, usual_plda = (run_arm(found, backend, "none", 0.01) for backend in ("lda", "plda"))
            row.update(compare=str(args.compare[offset]), usual_unseen_among_all=usual["unseen_among_all"],
                       usual_trained_test_among_all=usual["trained_test_among_all"],
                       usual_unseen_plda=usual_plda["unseen_among_all"],
                       usual_trained_test_plda=usual_plda["trained_test_among_all"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| seed | newcomers retrained as classes: softmax | cosine (LDA) | PLDA | enrolled without retraining: "
          "cosine (LDA) | PLDA |\n|---|---|---|---|---|---|")
    for row in rows:
        usual = (f"{row['usual_unseen_among_all']:.3f} | {row['usual_unseen_plda']:.3f}"
                 if "usual_unseen_among_all" in row else "- | -")
        print(f"| {row['seed']} | {row['unseen_softmax']:.3f} | {row['unseen_cosine_lda']:.3f} | "
              f"{row['unseen_plda']:.3f} | {usual} |")
    if args.json:
        atomic_write_json(args.json, {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, "
                                      f"{platform.platform()}", "data": str(args.data), "steps": args.steps,
                                      "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
