"""`voxaug evaluate --ckpt CKPT DATA --out REPORT`: how good the embeddings are, in one JSON and one PNG."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from voxaug.checkpoint import load_model
from voxaug.cli.common import CacheOption, DeviceOption, QuietOption, clean_errors, existing_file, output_folder
from voxaug.data.sources import open_source
from voxaug.data.store import PackedStore
from voxaug.device import resolve_device
from voxaug.embeddings.evaluation import (
    MAP_METHODS, centroid_accuracy, closed_set, embed_folder, embedding_map, read_trials, score_pairs, score_trials,
)
from voxaug.errors import VoxaugError
from voxaug.safeio import atomic_write_text, ensure_folder


@clean_errors
def evaluate(
    data: Path = typer.Argument(..., help="The training dataset; its validation split (the run's own) is evaluated."),
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint (RUN/best.pt)."),
    out: Path = typer.Option(..., "--out", help="Report folder: report.json and embeddings_map.png."),
    enroll: Path = typer.Option(None, "--enroll", help="<speaker>/ clip folders of speakers never trained on, to enrol."),
    test: Path = typer.Option(None, "--test", help="<speaker>/ clip folders of the same speakers, to identify."),
    trials: Path = typer.Option(None, "--trials", help="Verification trials: lines 'LABEL CLIP1 CLIP2' (1 = same speaker), paths relative to DATA."),
    max_pairs: int = typer.Option(20000, "--max-pairs", help="Verification pairs sampled from the validation set when no --trials."),
    map_method: str = typer.Option("pca", "--map", help="2-D map: pca or tsne."),
    device: str = DeviceOption,
    cache_dir: Path = CacheOption,
    quiet: bool = QuietOption,
) -> None:
    """Closed-set accuracy (softmax, cosine centroid, k-NN), unseen-speaker accuracy, EER/minDCF, a 2-D map."""
    existing_file(ckpt, "checkpoint")
    if (enroll is None) != (test is None):
        raise VoxaugError("--enroll and --test go together")
    for option, folder in (("--enroll", enroll), ("--test", test)):
        if folder is not None and not folder.is_dir():
            raise VoxaugError(f"{folder}: {option} folder not found" if not folder.exists()
                              else f"{folder}: {option} expects a folder of <speaker>/ clip folders, found a file")
    if max_pairs <= 0:
        raise VoxaugError(f"--max-pairs must be positive, got {max_pairs}")
    if map_method not in MAP_METHODS:
        raise VoxaugError(f"--map {map_method!r} is not known; accepted: {', '.join(MAP_METHODS)}")
    output_folder(out, "--out")
    parsed_trials = read_trials(trials, data) if trials else None
    torch_device = resolve_device(device)
    loaded = load_model(ckpt, torch_device)
    store = PackedStore.open(open_source(data, loaded.frontend), cache_dir, progress=not quiet)
    report, reference, held_out = closed_set(loaded, store, torch_device, progress=not quiet)
    groups = {"validation": held_out}
    if enroll is not None:
        enrolled = embed_folder(loaded, enroll, torch_device, cache_dir, not quiet)
        tested = embed_folder(loaded, test, torch_device, cache_dir, not quiet)
        unknown = sorted(set(tested.labels.tolist()) - set(enrolled.labels.tolist()))
        if unknown:
            raise VoxaugError(f"{test}: speakers {unknown} have test clips but no enrolment clips in {enroll}")
        report["unseen"] = {
            "speakers": len(set(enrolled.labels.tolist())),
            "test_clips": int(len(tested.labels)),
            "accuracy": centroid_accuracy(enrolled, tested),
            "chance": 1 / len(set(enrolled.labels.tolist())),
        }
        groups["unseen test"] = tested
    seed = loaded.config.seed
    report["verification"] = score_trials(loaded, parsed_trials, torch_device) if parsed_trials \
        else score_pairs(held_out, max_pairs, seed, reference)
    ensure_folder(out, "report folder")
    embedding_map(groups, out / "embeddings_map.png", map_method, seed)
    report["checkpoint"] = str(ckpt)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    lines = [f"closed set ({report['val_utterances']} validation utterances): softmax {report['softmax_accuracy']:.3f}, "
             f"cosine centroid {report['cosine_centroid_accuracy']:.3f}, cosine 5-NN {report['cosine_knn_accuracy']:.3f}, "
             f"softmax/cosine agreement {report['softmax_cosine_agreement']:.3f}"]
    if "unseen" in report:
        unseen = report["unseen"]
        lines.append(f"unseen speakers: {unseen['accuracy']:.3f} top-1 over {unseen['test_clips']} clips of "
                     f"{unseen['speakers']} enrolled speakers (chance {unseen['chance']:.3f})")
    verification = report["verification"]
    lines.append(f"verification: EER {verification['eer']:.3f} (threshold {verification['eer_threshold']:.3f}), "
                 f"minDCF {verification['min_dcf']:.3f} on {verification['trials']} trials")
    lines.append(f"wrote {out / 'report.json'} and {out / 'embeddings_map.png'}")
    typer.echo("\n".join(lines))
