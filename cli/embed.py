"""`voxaug embed --ckpt CKPT DATA --out DIR [--index FILE]`: unit-norm embeddings (+ a speaker index);
under `torchrun --nproc_per_node=N -m voxaug embed ...` the utterances are shared by N processes."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import typer

from voxaug.cli.common import (
    CacheOption, DeviceOption, QuietOption, check_training_speakers, chosen_model, clean_errors, declared_defaults,
    existing_file, file_name, folder_name, leave_to_rank_0, output_file, output_folder, warn_of_changed_clips,
)
from voxaug.embeddings.backend import DEFAULT_COHORT_TOP_K, DEFAULT_LDA_DIM, check_choice
from voxaug.embeddings.index import (
    MODES, SpeakerIndex, check_asnorm_mode, check_index_writable, index_lock, index_of_sidecar, not_index_file,
    sidecar_path,
)
from voxaug.embeddings.speaker_index import (
    DEFAULT_BACKEND, DEFAULT_COHORT_SIZE, DEFAULT_SCORE_NORM, IndexPlan, ScoringOptions, build_speaker_index,
    plan_speaker_index,
)
from voxaug.errors import VoxaugError, file_error
from voxaug.safeio import atomic_output

if TYPE_CHECKING:
    from voxaug.data.split import RecordedSplit
    from voxaug.data.store import PackedStore
    from voxaug.embeddings.extract import Embedded


def own_speakers_only(index: Path, model_option: str, model_path: Path) -> str:
    """Why embed --index refuses a dataset of other speakers, and the enroll command that indexes them: with the
    model named, as enroll needs it to create the index (this refusal leaves none) and takes it for an existing one."""
    return ("embed --index indexes the run's own training speakers (its back end is fitted on their training split); "
            f"enrol others with `voxaug enroll --index {shlex.quote(str(index))} {model_option} "
            f"{shlex.quote(str(model_path))} --speakers-dir DIR`")


def write_embeddings(out: Path, embeddings: np.ndarray, keys: list[str], speakers: list[str | None]) -> None:
    """``out/embeddings.npy`` (N, E) float32 and ``out/items.csv`` (row, path, speaker), each atomically. Both are
    written and synced in full before either is renamed into place, so a kill leaves a mismatched pair only in the
    moment between the two renames, not while a large file is being written."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "path", "speaker"])
    for row, (key, speaker) in enumerate(zip(keys, speakers)):
        writer.writerow([row, key, speaker or ""])
    with atomic_output(out / "items.csv", "wb") as items, atomic_output(out / "embeddings.npy", "wb") as array:
        items.write(buffer.getvalue().encode("utf-8", errors="surrogateescape"))  # a file name's own bytes
        np.save(array, embeddings.astype(np.float32), allow_pickle=False)
        for handle in (items, array):
            handle.flush()
            os.fsync(handle.fileno())


@clean_errors
def embed(
    data: Path = typer.Argument(..., parser=folder_name,
                                help="Dataset: HW4 folder or <speaker>/ clip folders (.pt or audio)."),
    ckpt: Path = typer.Option(None, "--ckpt", parser=file_name, metavar="<file>",
                              help="Checkpoint: RUN/last.pt, the end of training (best.pt is picked for closed-set accuracy)."),
    model: Path = typer.Option(None, "--model", parser=file_name, metavar="<file>",
                               help="ONNX model from `voxaug export` instead of --ckpt (the dataset "
                               "is still read with the train extra; the index it writes then needs no torch)."),
    out: Path = typer.Option(..., "--out", parser=folder_name, metavar="<dir>",
                             help="Folder for embeddings.npy and items.csv."),
    index: Path = typer.Option(None, "--index", parser=file_name, metavar="<file>",
                               help="Also write a FAISS speaker index here (+ FILE.json sidecar)."),
    per: str = typer.Option("speaker", "--per", help="Index one centroid per speaker, or every utterance."),
    hnsw: bool = typer.Option(False, "--hnsw", help="HNSW index instead of exact search (large utterance indexes)."),
    batch: int = typer.Option(64, "--batch", help="Most utterances per forward pass (batches are also capped in frames)."),
    backend: str = typer.Option(DEFAULT_BACKEND, "--backend", help="Scoring back end fitted on the training split and "
                                "stored with the index: none, center (minus the mean), lda (LDA + within-speaker whitening) or plda "
                                "(lda, scored by PLDA log-likelihood ratio)."),
    lda_dim: int = typer.Option(DEFAULT_LDA_DIM, "--lda-dim", help="lda, plda: output dimension (at most speakers - 1)."),
    score_norm: str = typer.Option(None, "--score-norm", help="What identify scores with by default: none (the back end's own score) or "
                                   f"asnorm (adaptive s-norm against the stored cohort; --per speaker only). "
                                   f"Default: {DEFAULT_SCORE_NORM}."),
    cohort_size: int = typer.Option(DEFAULT_COHORT_SIZE, "--cohort-size", help="Most held-out utterances kept as the AS-norm cohort."),
    cohort_top_k: int = typer.Option(DEFAULT_COHORT_TOP_K, "--cohort-top-k", help="AS-norm: top-K cohort scores per side."),
    window: int = typer.Option(None, "--window", help="Split utterances longer than this many frames into windows."),
    hop: int = typer.Option(None, "--hop", help="Hop between windows in frames (default: the window)."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an index already at --index (its enrolled "
                                 "speakers and calibration are lost)."),
    device: str = DeviceOption,
    cache_dir: Path = CacheOption,
    quiet: bool = QuietOption,
) -> None:
    """Export one L2-normalised float32 embedding per utterance, batched by length.

    Under torchrun each process embeds its share of the length-sorted batches and rank 0 writes
    embeddings.npy (rows in the dataset's order, the same numbers as one process) and the index.
    """
    from voxaug.checkpoint import load_model  # torch and the training stack load only when a command runs
    from voxaug.data.audio_store import open_dataset_store
    from voxaug.data.sources import open_source_for_model
    from voxaug.distributed import RankFailed, init_distributed, main_first, main_only, shutdown
    from voxaug.embeddings.extract import check_window, embed_store
    from voxaug.embeddings.identify import checkpoint_record

    model_path = chosen_model(ckpt, model)
    if model_path is None:
        raise VoxaugError("give the model: --ckpt RUN/last.pt or --model model.onnx")
    existing_file(model_path, "checkpoint" if model is None else "model")
    for option, value in (("--batch", batch), ("--window", window), ("--hop", hop)):
        if value is not None and value <= 0:
            raise VoxaugError(f"{option} must be a positive number of {'utterances' if option == '--batch' else 'frames'}, got {value}")
    if hop is not None and window is None:
        raise VoxaugError("--hop is the step between --window windows; give --window too")
    check_window(window, hop)
    check_choice("--per", per, MODES)
    scoring = ScoringOptions(backend, lda_dim, DEFAULT_SCORE_NORM if score_norm is None else score_norm, cohort_size,
                             cohort_top_k).validate()
    if index is None:
        refuse_index_options(per, hnsw, replace, score_norm, scoring)
    output_folder(out, "--out")
    if index is not None:
        if scoring.score_norm == "asnorm":  # before the dataset is read and embedded, not once the index is built
            check_asnorm_mode(per)
        output_file(index, "--index")
        output_file(sidecar_path(index), "--index's sidecar")
        refuse_existing_index(index, replace)
        check_index_writable(index, "embed --index")  # before the embedding, not at the end on the lock file
    if model is not None:
        if leave_to_rank_0("embed --model"):
            return
        _embed_with_model(model, data, out, index, replace, per, hnsw, scoring, window, hop, device, cache_dir, quiet)
        return
    context = init_distributed(device)
    clean = False
    try:
        loaded = load_model(ckpt, context.device)
        source = open_source_for_model(data, loaded.frontend, warn=context.is_main)
        if index is not None:
            check_training_speakers(data, source.speakers, loaded.speakers, own_speakers_only(index, "--ckpt", ckpt))
        store, _ = main_first(context, lambda: open_dataset_store(source, cache_dir, progress=not quiet and context.is_main,
                                                                  warn=context.is_main))
        speakers = [store.speakers[label] if label >= 0 else None for label in store.labels]
        rows = None
        if index is not None:  # its labels and cohort are checked before anything is embedded
            rows = indexed_split(data, store, loaded.split_clips, loaded.clip_count, context.is_main)
            plan = plan_speaker_index(speakers, store.groups, per, loaded.config.seed, loaded.config.val_fraction,
                                      scoring, store.speakers, loaded.config.split_version,
                                      loaded.config.model.embedding_dim, rows=rows)
            if context.is_main:
                warn_without_cohort(plan, per)
        embedded = embed_store(loaded.model, store, np.arange(len(store)), context.device, window, hop, max_batch=batch,
                               progress=not quiet, with_probabilities=False, context=context)
        main_only(context, lambda: _write_outputs(
            embedded, store.keys, speakers, out, index, replace,
            lambda: build_speaker_index(embedded.embeddings, speakers, store.groups, per, hnsw, checkpoint_record(ckpt),
                                        loaded.frontend.to_dict(), loaded.config.seed, loaded.config.val_fraction,
                                        scoring, store.speakers, loaded.config.split_version, rows=rows),
            "windows" if window else "utterances"))
        clean = True
    except RankFailed:
        return  # rank 0 prints the error, and its exit status is the run's (torchrun names it the root cause)
    finally:
        shutdown(context, clean)


def indexed_split(data: Path, store: PackedStore, record: dict | None, trained_count: int | None,
                  say: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """The run's (training, validation) rows of DATA as its record of its clips finds them, said in one line (where
    ``say``: rank 0) when clips were added or removed since training; None for a run without that record (its split
    is then rebuilt from the labels). A speaker none of whose training clips is left is refused: the index would
    leave it out without a word."""
    found = warn_of_changed_clips(data, store.keys, record, trained_count, indexed_clips, warn=say)
    if found is None:
        return None
    untrained = sorted(set(store.labels.tolist()) - set(store.labels[found.train].tolist()) - {-1})  # -1: unlabelled
    if untrained:
        first = store.speakers[untrained[0]]
        who = f"speaker {first!r} has" if len(untrained) == 1 else f"{len(untrained)} speakers (first {first!r}) have"
        raise file_error(data, f"{who} no clip the run trained on (each was removed, renamed or added since "
                               "training); embed --index enrols each speaker from the run's own training split")
    return found.train, found.val


def indexed_clips(found: RecordedSplit) -> str:
    """What embed --index does when DATA's clips changed since training."""
    return (f"the index is built on the run's own split ({len(found.train)} training and {len(found.val)} validation "
            "clips still there); the added clips are embedded, but left out of the index")


def _embed_with_model(model_path: Path, data: Path, out: Path, index: Path | None, replace: bool, per: str, hnsw: bool,
                      scoring: ScoringOptions, window: int | None, hop: int | None, device: str,
                      cache_dir: Path | None, quiet: bool) -> None:
    """`embed --model`: one process, through the Python API's model. The back end and AS-norm cohort are fitted
    on the run's own training split: the clips the model's record names (a checkpoint's, or an export's of one that
    keeps it), else the split its seed and validation fraction rebuild."""
    from voxaug.api.model import SpeakerModel
    from voxaug.data.audio_store import open_dataset_store
    from voxaug.data.sources import open_source_for_model
    from voxaug.data.split import SPLIT_VERSION
    from voxaug.embeddings.embedders import refuse_audio_only
    from voxaug.embeddings.extract import embed_store_with_model, refuse_too_long_for_export
    from voxaug.features import FrontendConfig

    speaker_model = SpeakerModel.load(model_path, device)
    refuse_audio_only(speaker_model)
    split = speaker_model.training_split
    if index is not None and split is None and (scoring.backend != "none" or scoring.score_norm != "none"):
        raise file_error(model_path, "this export does not record its run's training split, on which the index's "
                                     "back end is fitted; export it again, or pass --backend none")
    seed, val_fraction, split_version = split or (0, 0.0, SPLIT_VERSION)
    source = open_source_for_model(data, FrontendConfig.from_dict(speaker_model.frontend))
    if index is not None:
        check_training_speakers(data, source.speakers, speaker_model.speakers,
                                own_speakers_only(index, "--model", model_path))
    store, _ = open_dataset_store(source, cache_dir, progress=not quiet)
    refuse_too_long_for_export(speaker_model, store, window)
    speakers = [store.speakers[label] if label >= 0 else None for label in store.labels]
    rows = None
    if index is not None:  # its labels and cohort are checked before anything is embedded
        rows = indexed_split(data, store, speaker_model.engine.split_clips, speaker_model.engine.clip_count, True)
        warn_without_cohort(plan_speaker_index(speakers, store.groups, per, seed, val_fraction, scoring, store.speakers,
                                               split_version, speaker_model.embedding_dim,
                                               split_known=split is not None, rows=rows), per)
    embedded = embed_store_with_model(speaker_model, store, window, hop, progress=not quiet)
    _write_outputs(embedded, store.keys, speakers, out, index, replace,
                   lambda: build_speaker_index(embedded.embeddings, speakers, store.groups, per, hnsw,
                                               speaker_model.record(), speaker_model.frontend, seed, val_fraction,
                                               scoring, store.speakers, split_version, split is not None, rows),
                   "windows" if window else "utterances")


def refuse_index_options(per: str, hnsw: bool, replace: bool, score_norm: str | None, scoring: ScoringOptions) -> None:
    """Without --index, the options that shape the index would silently do nothing: refuse those set away from their
    defaults (as evaluate refuses --calibrate without one). The defaults are the options' own, as ``embed`` declares
    them, so that changing one there cannot make its default a refused value here."""
    defaults = ScoringOptions()
    declared = declared_defaults(embed)
    given = [option for option, value, default in (
        ("--per", per, declared["per"]), ("--hnsw", hnsw, declared["hnsw"]),
        ("--backend", scoring.backend, defaults.backend), ("--lda-dim", scoring.lda_dim, defaults.lda_dim),
        ("--score-norm", score_norm, declared["score_norm"]),
        ("--cohort-size", scoring.cohort_size, defaults.cohort_size),
        ("--cohort-top-k", scoring.cohort_top_k, defaults.cohort_top_k), ("--replace", replace, declared["replace"]))
        if value != default]
    if given:
        raise VoxaugError(f"{', '.join(given)}: options of the speaker index, and no --index was given; pass "
                          "--index FILE, or leave them out")


def warn_without_cohort(plan: IndexPlan, per: str) -> None:
    """One stderr line when a speaker index gets no AS-norm cohort, and why: `identify --score-norm asnorm` needs one."""
    if per == "speaker" and plan.cohort_rows is None:
        typer.echo(f"warning: the index gets no AS-norm cohort ({plan.cohort_source}), so `identify --score-norm "
                   "asnorm` cannot use it", err=True)


def refuse_existing_index(index: Path, replace: bool) -> None:
    """Refuse an index already at --index unless --replace, and, even with it, a file there (or at its sidecar's
    place) that is no part of a speaker index: a checkpoint or a dataset's JSON named by mistake would be lost."""
    foreign = not_index_file(index)
    if foreign == index and (owner := index_of_sidecar(index)):  # spk.faiss.json given for spk.faiss
        raise file_error(index, f"this is the sidecar of the speaker index {owner}; give that file as --index "
                                "(nothing was written)")
    if foreign is not None:
        raise file_error(foreign, "exists and is not a speaker index or its sidecar; embed --index would write over "
                                  "it: choose another --index (nothing was written)")
    if not replace and (index.exists() or sidecar_path(index).exists()):
        raise file_error(index, "an index is already there, and embed --index would replace it with the training "
                                "speakers alone (enrolled speakers and calibration lost); enrol into it with "
                                "`voxaug enroll`, or pass --replace (nothing was written)")


def _write_outputs(embedded: Embedded, keys: list[str], speakers: list[str | None], out: Path, index: Path | None,
                   replace: bool, build: Callable[[], SpeakerIndex], pieces: str) -> None:
    """embeddings.npy, items.csv and the index (rank 0 only under torchrun), then say what was written. With an
    index, all three are written under its lock, after checking again that no index appeared there meanwhile (an
    `enroll` may have created one while this embedded): then nothing is written."""
    speaker_index = build() if index else None
    with index_lock(index) if index else contextlib.nullcontext():
        if index:
            refuse_existing_index(index, replace)
        write_embeddings(out, embedded.embeddings, keys, speakers)
        if speaker_index is not None:
            speaker_index.save(index)
    shared = ""
    if embedded.per_rank is not None and len(embedded.per_rank) > 1:
        shared = f" (on {len(embedded.per_rank)} processes: {' + '.join(map(str, embedded.per_rank))} {pieces})"
    typer.echo(f"wrote {len(keys)} embeddings of dimension {embedded.embeddings.shape[1]} to "
               f"{out / 'embeddings.npy'}{shared}")
    if speaker_index is not None:
        scoring = f"back end {speaker_index.backend.kind}, scores {speaker_index.score_norm}"
        if speaker_index.cohort is not None:
            scoring += f", AS-norm cohort: {speaker_index.cohort.source}"
        elif speaker_index.mode == "speaker":
            scoring += ", no AS-norm cohort"
        article = "an" if speaker_index.mode == "utterance" else "a"
        typer.echo(f"wrote {article} {speaker_index.mode} index of {len(speaker_index.speakers)} speakers to {index} "
                   f"(+ {index}.json; {scoring})")
