"""`voxaug evaluate --ckpt CKPT DATA --out REPORT` (or `--model model.onnx`): how good the embeddings are, in one
JSON and one PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import typer

from voxaug.cli.common import (
    CacheOption, DeviceOption, QuietOption, check_training_speakers, chosen_model, clean_errors, declared_defaults,
    existing_file, file_name, folder_name, output_file, output_folder, warn_calibration_outdated, warn_of_changed_clips,
)
from voxaug.embeddings.backend import SCORE_NORMS, check_choice
from voxaug.embeddings.index import SpeakerIndex, check_index_writable, check_lock_timeout, index_lock
from voxaug.errors import VoxaugError, counted, file_error, not_a_folder
from voxaug.safeio import atomic_write_text, ensure_folder, same_name

if TYPE_CHECKING:
    from voxaug.data.split import RecordedSplit
    from voxaug.data.store import PackedStore
    from voxaug.embeddings.embedders import Embedder
    from voxaug.embeddings.evaluation import LabelledEmbeddings, Trial
    from voxaug.features import FrontendConfig


@clean_errors
def evaluate(
    data: Path = typer.Argument(..., parser=folder_name,
                                help="The training dataset; its validation split (the run's own) is evaluated."),
    ckpt: Path = typer.Option(None, "--ckpt", parser=file_name, metavar="<file>",
                              help="Checkpoint (RUN/last.pt, the model the index was built with)."),
    model: Path = typer.Option(None, "--model", parser=file_name, metavar="<file>",
                               help="ONNX model from `voxaug export` instead of --ckpt (the model "
                               "an index built with `embed --model` records)."),
    out: Path = typer.Option(..., "--out", parser=folder_name, metavar="<dir>",
                             help="Report folder: report.json and embeddings_map.png."),
    enroll: Path = typer.Option(None, "--enroll", parser=folder_name, metavar="<dir>",
                                help="<speaker>/ clip folders of speakers never trained on, to enrol."),
    test: Path = typer.Option(None, "--test", parser=folder_name, metavar="<dir>",
                              help="<speaker>/ clip folders of the same speakers, to identify."),
    trials: Path = typer.Option(None, "--trials", parser=file_name, metavar="<file>",
                                help="Verification trials: lines 'LABEL CLIP1 CLIP2' (1 = same speaker), paths "
                                "relative to DATA or --trials-root."),
    trials_root: Path = typer.Option(None, "--trials-root", parser=folder_name, metavar="<dir>",
                                     help="Folder the --trials paths are relative to (default DATA): a test set's, "
                                     "such as VoxCeleb1's wav/ for veri_test2.txt."),
    max_pairs: int = typer.Option(20000, "--max-pairs", help="Verification pairs sampled from the validation set when no --trials."),
    map_method: str = typer.Option("pca", "--map", help="2-D map: pca or tsne."),
    index: Path = typer.Option(None, "--index", parser=file_name, metavar="<file>",
                               help="Speaker index (from embed/enroll): score open-set identification "
                               "and AS-norm trials with its back end and cohort."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Write the threshold at --target-far into the index's sidecar; "
                                   "identify then uses it by default."),
    target_far: float = typer.Option(0.01, "--target-far", help="False-alarm rate the threshold allows."),
    score_norm: str = typer.Option(None, "--score-norm", help="none or asnorm for the open-set scores (default: the index's)."),
    impostors: Path = typer.Option(None, "--impostors", parser=folder_name, metavar="<dir>",
                                   help="<speaker>/ clip folders of speakers never enrolled: the share "
                                   "answered 'unknown' at the threshold."),
    lock_timeout: float = typer.Option(60.0, "--lock-timeout", help="Seconds --calibrate waits for an enrol on the same "
                                       "index to finish."),
    device: str = DeviceOption,
    cache_dir: Path = CacheOption,
    quiet: bool = QuietOption,
) -> None:
    """Closed-set accuracy (softmax, cosine centroid, k-NN), unseen-speaker accuracy, EER/minDCF, a 2-D map."""
    from voxaug.data.audio_store import open_dataset_store
    from voxaug.data.sources import open_source_for_model
    from voxaug.device import resolve_device
    from voxaug.embeddings.calibration import calibrate as calibrate_threshold
    from voxaug.embeddings.calibration import check_far, open_set_scores, unresolved_far
    from voxaug.embeddings.evaluation import (
        MAP_METHODS, TrialScorer, centroid_accuracy, closed_set, embed_folder, embedding_map,
        read_trials, refuse_trial_features, score_pairs, score_trials,
    )
    from voxaug.embeddings.embedders import CheckpointEmbedder, ExportEmbedder
    from voxaug.embeddings.identify import check_model

    model_path = chosen_model(ckpt, model)
    if model_path is None:
        raise VoxaugError("give the model: --ckpt RUN/last.pt or --model model.onnx")
    existing_file(model_path, "checkpoint" if model is None else "model")
    if (enroll is None) != (test is None):
        raise VoxaugError("--enroll and --test go together")
    for option, folder in (("--enroll", enroll), ("--test", test)):
        if folder is not None and not folder.is_dir():
            raise VoxaugError(f"{folder}: {option} folder not found" if not folder.exists()
                              else f"{folder}: {option} expects a folder of <speaker>/ clip folders, found a file")
    if max_pairs < 2:
        raise VoxaugError(f"--max-pairs must be at least 2 (a same-speaker and a different-speaker pair), "
                          f"got {max_pairs}")
    if trials is not None and max_pairs != declared_defaults(evaluate)["max_pairs"]:
        raise VoxaugError(f"--max-pairs {max_pairs}: only the pairs sampled from the validation split are capped, and "
                          "--trials scores every trial of its file; leave one of them out")
    trials_root = check_trials_root(trials_root, trials)
    check_far(target_far)
    check_lock_timeout(lock_timeout)
    if score_norm is not None:
        check_choice("--score-norm", score_norm, SCORE_NORMS)
    if index is None and (calibrate or impostors is not None or score_norm is not None):
        raise VoxaugError("--calibrate, --impostors and --score-norm score against an index: pass --index")
    if not calibrate and lock_timeout != declared_defaults(evaluate)["lock_timeout"]:
        raise VoxaugError(f"--lock-timeout {lock_timeout:g}: only --calibrate waits for the index's lock (to write its "
                          "threshold); pass --calibrate, or leave it out")
    if impostors is not None and not impostors.is_dir():
        raise VoxaugError(f"{impostors}: --impostors {not_a_folder(impostors)}")
    speaker_index = SpeakerIndex.load(index) if index is not None else None
    if calibrate:  # before minutes of embedding, not at the end on the lock file
        check_index_writable(index, "--calibrate")
    check_choice("--map", map_method, MAP_METHODS)
    output_folder(out, "--out")
    for name, what in (("report.json", "report"), ("embeddings_map.png", "map")):  # found now, not after the embedding
        output_file(out / name, f"--out's {what}")
    parsed_trials = read_trials(trials, trials_root or data) if trials else None
    embedder = CheckpointEmbedder.load(ckpt, resolve_device(device)) if model is None else ExportEmbedder.load(model, device)
    if embedder.split.val_fraction == 0:  # closed_set scores the validation split on every run, --test or --trials too
        raise file_error(model_path, "no validation utterances: the run was trained with --val-fraction 0, and "
                                     "evaluate scores the run's own validation split")
    if parsed_trials:
        refuse_trial_features(embedder.frontend, parsed_trials)
    if speaker_index is not None:
        check_model(speaker_index, index, model_path, embedder.sha256, embedder.embedding_dim,
                    embedder.source_sha256)
        score_norm = score_norm or speaker_index.score_norm
        if score_norm == "asnorm":
            try:
                speaker_index.check_asnorm()
            except VoxaugError as exc:
                raise file_error(index, str(exc)) from None
    if speaker_index is not None and len(speaker_index.speakers) < 2:  # open_set_scores refuses it, after the embedding
        raise file_error(index, f"holds {len(speaker_index.speakers)} enrolled speaker(s); the open-set figures of "
                                "--index (and --calibrate) need at least two: a clip's impostor score is its best "
                                "score against another enrolled speaker")
    check_speaker_folders(speaker_index, index, enroll, test, impostors)  # before anything is embedded
    refuse_folder_features(embedder.frontend, enroll, test, impostors)
    if test is not None:
        warn_enrolment_clips_tested(test, enroll, speaker_index, index)
    source = open_source_for_model(data, embedder.frontend)
    check_training_speakers(data, source.speakers, embedder.speakers,
                            "evaluate scores the run's own validation split of its dataset")  # before featurising
    speakers = {utterance.path.resolve(): utterance.speaker for utterance in source.utterances
                if utterance.speaker} if parsed_trials else {}
    if parsed_trials:
        warn_contradicted_trials(trials, parsed_trials, speakers)
    store, _ = open_dataset_store(source, cache_dir, progress=not quiet)
    rows = run_split(data, embedder, store)
    if speaker_index is not None and test is None:  # the open-set figures score the validation split: checked now
        validation = np.array(store.speakers)[store.labels[rows[1]]]
        refuse_unenrolled(speaker_index, index, validation.tolist(), validation_source(data, len(validation)))
    report, reference, held_out = closed_set(embedder, store, not quiet, rows)
    groups = {"validation": held_out}
    if enroll is not None:
        enrolled = embed_folder(embedder, enroll, cache_dir, not quiet, warn=False)
        tested = embed_folder(embedder, test, cache_dir, not quiet, warn=False)
        report["unseen"] = {
            "speakers": len(set(enrolled.labels.tolist())),
            "test_clips": int(len(tested.labels)),
            "accuracy": centroid_accuracy(enrolled, tested),
            "chance": 1 / len(set(enrolled.labels.tolist())),
        }
        groups["unseen test"] = tested
        if speaker_index is not None:
            report["unseen"].update(among_enrolled(speaker_index, tested, score_norm))
    seed = embedder.split.seed

    def verification(scorer: TrialScorer) -> dict:
        return score_trials(embedder, parsed_trials, scorer, speakers) if parsed_trials \
            else score_pairs(held_out, max_pairs, seed, reference, scorer)

    report["verification"] = verification(TrialScorer(target_far=target_far))
    if speaker_index is not None and (speaker_index.cohort is not None or speaker_index.backend.kind != "none"):
        report["verification_backend"] = verification(TrialScorer(speaker_index, "none", target_far))
    if speaker_index is not None and speaker_index.cohort is not None:
        try:
            report["verification_asnorm"] = verification(TrialScorer(speaker_index, "asnorm", target_far))
        except VoxaugError as exc:  # a trial leaves out both its speakers' entries: embed checked only one's
            typer.echo(f"warning: {index}: no AS-norm verification figures: {exc} once a trial's two speakers are "
                       "left out", err=True)
    if speaker_index is not None:
        clips, source = calibration_clips(speaker_index, held_out, groups.get("unseen test"), data, test)
        try:
            scores = open_set_scores(speaker_index, clips.embeddings, clips.labels.tolist(), score_norm)
        except VoxaugError as exc:  # the index lacks the speakers of the clips it is scored on: name it and them
            raise file_error(index, f"{exc}; the open-set figures score {source.removeprefix('evaluate --calibrate on ')}"
                                    " against this index") from None
        report["open_set"] = calibrate_threshold(scores, target_far, score_norm, source,
                                                 speaker_index.cohort.top_k if speaker_index.cohort else None,
                                                 speaker_index.enrolled_record())
        if impostors is not None:
            strangers = embed_folder(embedder, impostors, cache_dir, not quiet, warn=False)
            report["open_set"]["impostors"] = impostor_rejection(speaker_index, strangers, score_norm,
                                                                 report["open_set"]["value"])
    ensure_folder(out, "report folder")
    embedding_map(groups, out / "embeddings_map.png", map_method, seed)
    report["checkpoint"] = str(model_path)
    report["inputs"] = (report_inputs(model_path, "checkpoint" if model is None else "onnx", embedder.sha256, data,
                                      trials, max_pairs, trials_root) | index_inputs(speaker_index, index, score_norm, calibrate))
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    if calibrate:  # last, so that a report that cannot be written leaves the index as it was
        try:
            with index_lock(index, lock_timeout):
                latest = SpeakerIndex.load(index)  # an enrol may have run since it was read
                latest.calibration = report["open_set"]
                latest.save(index)
        except (VoxaugError, OSError) as exc:  # OSError: the lock file was refused (the folder turned read-only)
            # flock's own OSError (ENOLCK: NFS without locks) names no file: then the index is named
            reason = f"{exc.filename or index}: {exc.strerror or exc}" if isinstance(exc, OSError) else exc
            raise VoxaugError(f"{reason}; the index was not calibrated (the report's figures are in "
                              f"{out / 'report.json'})") from None
        warn_calibration_outdated(index, latest.calibration_outdated())  # enrolled or removed while it scored
        if score_norm != latest.score_norm:  # the sidecar keeps one threshold: the one identify uses is gone
            typer.echo(f"warning: {index}: the threshold is calibrated for {latest.score_name(score_norm)} scores, "
                       f"and identify scores {latest.score_name(latest.score_norm)} by default (the index's): give it "
                       f"--score-norm {score_norm} to use this threshold, or calibrate again without --score-norm",
                       err=True)
    lines = [f"closed set ({report['val_utterances']} validation utterances): softmax {report['softmax_accuracy']:.3f}, "
             f"cosine centroid {report['cosine_centroid_accuracy']:.3f}, cosine 5-NN {report['cosine_knn_accuracy']:.3f}, "
             f"softmax/cosine agreement {report['softmax_cosine_agreement']:.3f}"]
    if "unseen" in report:
        unseen = report["unseen"]
        lines.append(f"unseen speakers: {unseen['accuracy']:.3f} top-1 over {unseen['test_clips']} clips of "
                     f"{unseen['speakers']} enrolled speakers (chance {unseen['chance']:.3f})")
        if "among_enrolled" in unseen:
            lines.append(f"unseen speakers among all {unseen['enrolled']} enrolled: {unseen['among_enrolled']:.3f} top-1 "
                         f"({unseen['score']})")
    for key, label in (("verification", "cosine"), ("verification_backend", f"{speaker_index.backend.kind if speaker_index else ''} back end"),
                       ("verification_asnorm", "AS-norm")):
        if key in report:
            v = report[key]
            lines.append(f"verification ({label}): EER {v['eer']:.3f} (threshold {v['eer_threshold']:.3f}), minDCF "
                         f"{v['min_dcf']:.3f}, threshold at FAR {v['target_far']:g}: {v['far_threshold']:.3f} on "
                         f"{v['trials']} trials")
    if "open_set" in report:
        o = report["open_set"]
        written = " (written to the index)" if calibrate else ""  # the FAR threshold is what identify then uses
        lines.append(f"open set ({speaker_index.score_name(o['score_norm'])}): threshold {o['value']:.3f} at FAR "
                     f"{o['target_far']:g}{written} -> DIR {o['dir']:.3f}, enrolled clips accepted {o['acceptance']:.3f}, "
                     f"top-1 {o['top1']:.3f}; EER threshold {o['eer_threshold']:.3f}")
        if "impostors" in o:
            lines.append(f"impostors (never enrolled): {o['impostors']['unknown']:.3f} answered unknown of "
                         f"{o['impostors']['clips']} clips")
    lines.append(f"wrote {out / 'report.json'} and {out / 'embeddings_map.png'}")
    typer.echo("\n".join(lines))
    if "open_set" in report and (unresolved := unresolved_far(report["open_set"])):  # after the figures it qualifies
        typer.echo(f"warning: {index}: {unresolved}", err=True)


def report_inputs(model_path: Path, model_kind: str, model_sha256: str, data: Path, trials: Path | None,
                  max_pairs: int, trials_root: Path | None = None) -> dict:
    """The model (by content too: RUN/last.pt changes while its run trains on), the dataset and the verification
    trials the report's figures were scored with (and the folder their clips were found in), so that the file alone
    says which."""
    return {"model": str(model_path), "model_kind": model_kind, "model_sha256": model_sha256, "data": str(data),
            "trials": str(trials) if trials is not None else None,
            "trials_root": str(trials_root or data) if trials is not None else None,
            "max_pairs": None if trials is not None else max_pairs}


def run_split(data: Path, embedder: Embedder, store: PackedStore) -> tuple[np.ndarray, np.ndarray]:
    """The run's own (training, validation) rows of DATA as it is now, said in one line where its clips changed since
    training, and refused where none of the clips the run held out is left to score."""
    from voxaug.embeddings.evaluation import validation_split

    found = warn_of_changed_clips(data, store.keys, embedder.split_clips, embedder.clip_count, scored_validation)
    if found is None:
        return validation_split(embedder, store)
    if len(found.val) == 0 and found.recorded_val:
        raise file_error(data, f"none of the run's {counted(found.recorded_val, 'validation clip')} is there any more "
                               "(removed or renamed since training); evaluate scores the run's own validation split")
    return found.train, found.val


def scored_validation(found: RecordedSplit) -> str:
    """What evaluate does when DATA's clips changed since training."""
    return (f"evaluate scores the {len(found.val)} of the run's {found.recorded_val} validation clips still there, and "
            "leaves the added ones out of its figures")


def check_trials_root(trials_root: Path | None, trials: Path | None) -> Path | None:
    """``--trials-root`` as given, refused without ``--trials`` (it would change nothing) or where it is no folder:
    the published lists (VoxCeleb's ``veri_test2.txt``) name clips under a test set's folder, not the training DATA."""
    if trials_root is None:
        return None
    if trials is None:
        raise VoxaugError(f"--trials-root {trials_root}: only the clips of a --trials file are found there; pass "
                          "--trials")
    if not trials_root.is_dir():
        raise file_error(trials_root, f"--trials-root {not_a_folder(trials_root)}")
    return trials_root


def index_inputs(index: SpeakerIndex | None, index_path: Path | None, score_norm: str | None, calibrate: bool) -> dict:
    """The index the open-set and back-end figures were scored against, its back end and score normalisation (the
    printed lines name them; the figures alone do not), and whether the threshold was to be written into it."""
    if index is None:
        return {"index": None, "backend": None, "score_norm": None, "calibrate": False}
    return {"index": str(index_path), "backend": index.backend.kind, "score_norm": score_norm, "calibrate": calibrate}


def refuse_unenrolled(index: SpeakerIndex, index_path: Path, labels: list[str], source: str) -> None:
    """Before anything is embedded: the clips the open-set figures score (``source`` says which) must be of
    speakers the index holds, or they have no genuine score."""
    from voxaug.embeddings.calibration import check_enrolled

    try:
        check_enrolled(index, labels)
    except VoxaugError as exc:
        raise file_error(index_path, f"{exc}; the open-set figures score {source} against this index") from None


def validation_source(data: Path, clips: int) -> str:
    """How the messages name the run's validation split of DATA, the clips scored when no --test is given."""
    return f"{data} (the run's validation split, {clips} clips)"


def refuse_folder_features(frontend: FrontendConfig, *folders: Path | None) -> None:
    """Before anything is embedded: `.pt` clips in a speaker folder that the model's front end did not make
    (embed_folder refuses them too, but only once the validation split is embedded)."""
    from voxaug.data.sources import ClipFolderSource, refuse_features_for

    for folder in folders:
        if folder is not None:
            # check_speaker_folders has said which speaker folders hold no clips
            refuse_features_for(frontend, ClipFolderSource(folder, frontend, warn=False))


def check_speaker_folders(index: SpeakerIndex | None, index_path: Path | None, enroll: Path | None,
                          test: Path | None, impostors: Path | None) -> None:
    """Refuse speaker folders that cannot be scored as asked, from their folder names alone, so that the
    mistake costs a directory listing rather than the minutes of embedding before the figure that needs them."""
    from voxaug.data.sources import ClipFolderSource

    speakers = {folder: {same_name(name) for name in ClipFolderSource(folder).speakers}  # one spelling of é
                for folder in (enroll, test, impostors) if folder is not None}
    if test is not None:
        unknown = sorted(speakers[test] - speakers[enroll])
        if unknown:
            raise VoxaugError(f"{test}: speakers {unknown} have test clips but no enrolment clips in {enroll}")
    if index is None:
        return
    missing = sorted(set(index.spelled(speakers[test])) - set(index.speakers)) if test is not None else []
    if missing:
        raise file_error(index_path, f"speakers {missing[:5]} have test clips in {test} but are not enrolled in this "
                                     f"index; enrol them first (voxaug enroll --index {index_path} --speakers-dir DIR "
                                     "--append)")
    enrolled = sorted(set(index.spelled(speakers[impostors])) & set(index.speakers)) if impostors is not None else []
    if enrolled:
        raise file_error(impostors, f"--impostors: speakers {enrolled[:5]} are enrolled in {index_path}, so they are "
                                    "not impostors")


def warn_contradicted_trials(path: Path, trials: list[Trial], speakers: dict[Path, str]) -> None:
    """One stderr line when trials' labels contradict DATA's own speakers (1 for clips of two speakers, 0 for one's):
    a wrong label moves the EER. Said, not refused: the trials file is the user's stated truth (a published list
    scored on a dataset whose labels may be the noisy side), and it is scored as labelled."""
    from voxaug.embeddings.evaluation import contradicted_trials

    wrong = contradicted_trials(trials, speakers)
    if wrong:
        first = wrong[0]
        owners = (f"one speaker, {speakers[first.first]!r}" if not first.same
                  else f"{speakers[first.first]!r} and {speakers[first.second]!r}")
        typer.echo(f"warning: {path}: {len(wrong)} of {counted(len(trials), 'trial')} "
                   f"{'contradicts' if len(wrong) == 1 else 'contradict'} DATA's speaker labels "
                   f"(first: line {first.line}, labelled {int(first.same)}, pairs clips of {owners}); they are scored "
                   "as the trials file labels them", err=True)


def warn_enrolment_clips_tested(test: Path, enroll: Path, index: SpeakerIndex | None, index_path: Path | None) -> None:
    """One stderr line when --test holds clips (by content, under any name) of --enroll or that the index was enrolled
    from: their scores are not held out, so the unseen accuracy and a threshold picked on them read too well."""
    from voxaug.api.inputs import clip_digest, enrolled_twin_digest
    from voxaug.data.sources import ClipFolderSource

    given = {clip_digest(utterance.path) for utterance in ClipFolderSource(enroll, warn=False).utterances}
    recorded = index.clip_owners() if index is not None else {}
    tested = [utterance.path for utterance in ClipFolderSource(test, warn=False).utterances]
    leaked = [path for path in tested if (digest := clip_digest(path)) in given
              or enrolled_twin_digest(path, digest, recorded) in recorded]
    if leaked:
        where = f"{enroll}" + (f" or {index_path}" if index_path is not None else "")
        typer.echo(f"warning: {test}: {len(leaked)} of {counted(len(tested), 'test clip')} (e.g. {leaked[0]}) are "
                   f"enrolment clips too (in {where}): their scores are not held out, so the unseen-speaker accuracy "
                   + ("and the open-set figures read" if index is not None else "reads") + " too well", err=True)


def among_enrolled(index: SpeakerIndex, tested: LabelledEmbeddings, score_norm: str) -> dict:
    """Top-1 of the unseen speakers' test clips among everyone the index holds (trained speakers too)."""
    answers = [ranked[0][0] for ranked in index.search(tested.embeddings, 1, score_norm=score_norm)]
    expected = np.array(index.spelled(tested.labels.tolist()))
    return {"among_enrolled": float(np.mean(np.array(answers) == expected)), "enrolled": len(index.speakers),
            "score": index.score_name(score_norm)}


def impostor_rejection(index: SpeakerIndex, strangers: LabelledEmbeddings, score_norm: str, threshold: float) -> dict:
    """The share of clips of never-enrolled speakers whose best score falls under ``threshold``."""
    best = np.array([ranked[0][1] for ranked in index.search(strangers.embeddings, 1, score_norm=score_norm)])
    return {"clips": int(len(best)), "unknown": float((best < threshold).mean())}


def calibration_clips(index: SpeakerIndex, validation: LabelledEmbeddings, unseen_test: LabelledEmbeddings | None,
                      data: Path, test: Path | None) -> tuple[LabelledEmbeddings, str]:
    """The clips the threshold is picked on, and a line saying which.

    Clips of enrolled speakers the network never trained on (``--test``) when there are any: their
    best score against everyone else is what an unknown voice scores, which is what the threshold must
    reject. A trained speaker's clip is pulled towards its own class and away from the others, so
    leaving its own speaker out (the validation split, the fallback) underestimates impostor scores.
    """
    if unseen_test is not None and set(index.spelled(unseen_test.labels.tolist())) <= set(index.speakers):
        return unseen_test, (f"evaluate --calibrate on the enrolled unseen speakers' clips in {test} "
                             f"({len(unseen_test.labels)} clips of {len(set(unseen_test.labels.tolist()))} speakers)")
    return validation, f"evaluate --calibrate on {validation_source(data, len(validation.labels))}"
