"""Does AS-norm lower EER *and* minDCF with any cohort a training set, or a set of other speakers, can offer?
A sweep on trained models.

Two trial sets (``--trials``), each scored plain and AS-normalised:

- ``unseen``: every pair of clips of speakers the network never trained on (the newcomers'
  enrolment and test clips and the impostors), so the cohort, drawn from the training speakers, is
  disjoint from every trial's speakers, as it would be in use;
- ``validation``: every pair of the run's validation-split clips, the trials ``voxaug evaluate``
  scores without ``--trials``; the cohort leaves both sides' speakers out, as ``evaluate`` does.

Each cohort source is tried at several top-K sizes with every back end (none, lda, plda; PLDA
scores each cohort entry as a speaker model, as an index does):

- ``validation``: the run's validation-split utterances (what ``voxaug embed`` stores);
- ``training``: the training-split utterances (memorised by the network);
- ``centroids``: one mean vector per training speaker (its training-split utterances);
- with ``--external-cohort DIR``, ``external`` and ``external centroids``: the utterances, or one mean
  per speaker, of DIR's speakers, a set the network never trained on and no trial's speaker is in
  (``DIR/<speaker>/`` clip folders, or a ``voxaug synth``/``crosscheck.py build`` output, whose
  ``unseen/enroll`` and ``unseen/test`` are used): the kind of cohort published AS-norm gains use.

    python benchmarks/asnorm_cohorts.py demo/data --ckpt demo/run/last.pt --trials validation unseen --json asnorm.json
    python benchmarks/asnorm_cohorts.py cc --ckpt cc-run/reverb+noise-seed0/run/last.pt --set espeak-ng --json asnorm.json --append
    python benchmarks/asnorm_cohorts.py demo/data --ckpt demo/run/last.pt --external-cohort cohort1000 --json external.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend_ablation import embed_everything
from voxaug.checkpoint import LoadedModel
from voxaug.embeddings.evaluation import LabelledEmbeddings, embed_folder
from voxaug.embeddings.embedders import CheckpointEmbedder
from voxaug.embeddings.backend import Cohort, ScoringBackend, pair_as_norm
from voxaug.embeddings.scoring import eer_and_min_dcf
from voxaug.errors import VoxaugError
from voxaug.safeio import atomic_write_json
from report import folder_name, json_output

TOP_KS = (10, 20, 50, 100, 300)
BACKENDS = ("none", "lda", "plda")
TRIAL_SETS = ("unseen", "validation")


@dataclass
class CohortSource:
    """A cohort's unit vectors (for cosines) with the mean and clip count of each entry (for PLDA models)."""

    cohort: Cohort
    means: np.ndarray
    counts: np.ndarray

    def scores(self, backend: ScoringBackend, vectors: np.ndarray) -> np.ndarray | None:
        """(N, M) PLDA scores of ``vectors`` against each entry, or ``None`` (the cohort's own cosines)."""
        if backend.plda is None:
            return None
        return backend.plda.speaker_scores(self.means, self.counts, vectors)


def speaker_means(space: np.ndarray, labels: np.ndarray) -> CohortSource:
    """One cohort entry per speaker: the mean of its vectors (and its clip count, for PLDA)."""
    speakers = np.unique(labels)
    counts = np.array([(labels == s).sum() for s in speakers], dtype=np.float64)
    means = np.stack([space[labels == s].sum(axis=0) for s in speakers]) / counts[:, None]
    unit = (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)
    return CohortSource(Cohort(unit, speakers.tolist()), means, counts)


def utterances(space: np.ndarray, labels: np.ndarray) -> CohortSource:
    """One cohort entry per utterance."""
    return CohortSource(Cohort(space, labels.tolist()), space, np.ones(len(space)))


def cohorts(space: np.ndarray, labels: np.ndarray, train: np.ndarray, held_out: np.ndarray,
            external: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, CohortSource]:
    """Every cohort source in the scoring space, without its top-K (set per arm); ``external`` is
    another speaker set's vectors in that space, with their speakers."""
    sources = {"validation": utterances(space[held_out], labels[held_out]),
               "training": utterances(space[train], labels[train]),
               "centroids": speaker_means(space[train], labels[train])}
    if external is not None:
        sources.update({"external": utterances(*external), "external centroids": speaker_means(*external)})
    return sources


def trial_clips(found: dict, trials: str, held_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network's embeddings and speaker labels of the clips whose every pair is a trial."""
    if trials == "validation":
        return found["train"].embeddings[held_out], np.asarray(found["train"].labels)[held_out]
    parts = [found[k] for k in ("unseen_enroll", "unseen_test", "unseen_impostors") if k in found]
    return np.concatenate([p.embeddings for p in parts]), np.concatenate([np.asarray(p.labels) for p in parts])


def check_pairs(trials: str, labels: np.ndarray) -> None:
    """Refuse a trial set with no same-speaker or no different-speaker pair (e.g. one validation clip per
    speaker), which EER and minDCF cannot score."""
    counts = np.unique(labels, return_counts=True)[1]
    if counts.max(initial=0) < 2:
        raise VoxaugError(f"{trials} trials: no speaker has two of the {len(labels)} clips, so no same-speaker trial")
    if len(counts) < 2:
        raise VoxaugError(f"{trials} trials: all {len(labels)} clips are one speaker's, so no different-speaker trial")


def sweep(found: dict, backend_kind: str, trials: str = "unseen", external: LabelledEmbeddings | None = None) -> list[dict]:
    labels = np.asarray(found["train"].labels)
    train, held_out = found["rows"]
    backend = ScoringBackend.fit(backend_kind, found["train"].embeddings[train], labels[train])
    clips, clip_labels = trial_clips(found, trials, held_out)
    check_pairs(trials, clip_labels)
    vectors = backend.apply(clips)
    first, second = np.triu_indices(len(clip_labels), k=1)
    same = clip_labels[first] == clip_labels[second]
    scores = backend.pair_scores(vectors[first], vectors[second])
    plain = eer_and_min_dcf(scores, same)
    rows = [{"backend": backend_kind, "cohort": "none", "top_k": 0, "eer": plain["eer"], "min_dcf": plain["min_dcf"],
             "trials": plain["trials"], "same_trials": plain["same_trials"]}]
    trial_speakers = set(clip_labels.tolist())
    outside = None if external is None else (backend.apply(external.embeddings), np.asarray(external.labels))
    for name, source in cohorts(backend.apply(found["train"].embeddings), labels, train, held_out, outside).items():
        cohort_scores = source.scores(backend, vectors)
        for top_k in TOP_KS:
            if top_k > len(source.cohort.labels):
                continue
            source.cohort.top_k = top_k
            if not trial_speakers.isdisjoint(source.cohort.labels):  # a trial's own speakers sit in the cohort
                sides = [source.cohort.stats(vectors[a], exclude=clip_labels[a].tolist(), also_exclude=clip_labels[b].tolist(),
                                             scores=None if cohort_scores is None else cohort_scores[a])
                         for a, b in ((first, second), (second, first))]
            else:
                mean, std = source.cohort.stats(vectors, scores=cohort_scores)
                sides = [(mean[first], std[first]), (mean[second], std[second])]
            result = eer_and_min_dcf(pair_as_norm(scores, *sides), same)
            rows.append({"backend": backend_kind, "cohort": name, "top_k": top_k, "eer": result["eer"],
                         "min_dcf": result["min_dcf"], "trials": result["trials"], "same_trials": result["same_trials"]})
    return rows


def external_speakers(loaded: LoadedModel, folder: Path, cache: Path | None) -> LabelledEmbeddings:
    """Every clip of the external cohort set, embedded: ``unseen/enroll`` and ``unseen/test`` of a
    generated set, else ``folder``'s own speaker folders."""
    parts = [folder / "unseen" / p for p in ("enroll", "test") if (folder / "unseen" / p).is_dir()] or [folder]
    found = [embed_folder(CheckpointEmbedder(loaded, torch.device("cpu")), part, cache, False) for part in parts]
    labels = np.concatenate([f.labels for f in found])  # named apart from the trials' speakers, who are excluded by name
    return LabelledEmbeddings(np.concatenate([f.embeddings for f in found]), np.char.add("external:", labels.astype(str)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a folder with unseen/{enroll,test} (voxaug synth or crosscheck.py build)")
    parser.add_argument("--ckpt", type=Path, nargs="+", required=True, help="one model, or several of the same data")
    parser.add_argument("--trials", nargs="+", choices=TRIAL_SETS, default=["unseen"])
    parser.add_argument("--cache-dir", type=folder_name)
    parser.add_argument("--external-cohort", type=Path, help="speakers the network never trained on, as two more "
                                                               "cohort sources (see above)")
    parser.add_argument("--set", help="the data's name in the JSON and its table (default: the folder's name)")
    parser.add_argument("--json", type=json_output)
    parser.add_argument("--append", action="store_true", help="add these runs to --json's, to render several sets together")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    runs = []
    for ckpt in args.ckpt:
        found = embed_everything(ckpt, args.data, args.cache_dir)
        external = None if args.external_cohort is None else external_speakers(found["model"], args.external_cohort,
                                                                                 args.cache_dir)
        for trials in args.trials:
            try:
                rows = [row for kind in BACKENDS for row in sweep(found, kind, trials, external)]
            except VoxaugError as error:
                print(f"{ckpt}: skipped: {error}", file=sys.stderr)
                continue
            runs.append({"set": args.set or args.data.name, "seed": found["model"].config.seed, "checkpoint": str(ckpt),
                         "data": str(args.data), "trials": trials, "rows": rows})
            print(f"{ckpt}: {trials} trials: {rows[0]['trials']} ({rows[0]['same_trials']} same-speaker)\n"
                  "| back end | cohort | top-K | EER | minDCF |\n|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['backend']} | {r['cohort']} | {r['top_k'] or '-'} | {r['eer']:.3f} | {r['min_dcf']:.3f} |")
    if not runs:
        print("error: no trial set could be scored; nothing written", file=sys.stderr)
        return 2
    if args.json:
        earlier = json.loads(args.json.read_text(encoding="utf-8"))["runs"] if args.append and args.json.is_file() else []
        atomic_write_json(args.json, {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, "
                                      f"{platform.platform()}", "runs": earlier + runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
