"""`voxaug identify --index FILE CLIP…`: the top-k enrolled speakers (PLDA or cosine) beside the softmax classifier's answer."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from voxaug.cli.common import (DeviceOption, ModelOption, check_clip_files, chosen_model, clean_errors, clip_name,
                               expand_clips, file_name, refuse_feature_clips_the_model_cannot_take,
                               warn_calibration_outdated)
from voxaug.errors import counted
from voxaug.embeddings.backend import SCORE_NORMS, check_choice, check_top_k
from voxaug.embeddings.identify import UNKNOWN, Identification, breaks_lines, check_threshold
from voxaug.embeddings.index import check_search_top_k


BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Unicode's bidirectional embeddings, overrides and isolates: printed bare, U+202E shows the rest of the line right to
left, so that a speaker named ``\\u202eecilA`` reads as ``Alice`` and the scores after it come out reversed."""


def shown(name: str) -> str:
    """A name as the table prints it: quoted where printing it bare could mislead, so a speaker name (from a
    downloaded sidecar or model, or one an older voxaug took) holding a newline or line separator cannot forge a
    row, and one called ``unknown`` or padded with spaces cannot pass for the decision or another name. So is one
    holding surrogates (a file name's undecodable bytes, as ``os.fsdecode`` gives them), which a UTF-8 stdout with
    strict errors (en_US.UTF-8 and the like; C.UTF-8 escapes them) cannot write: ``repr`` escapes them."""
    undecodable = any("\ud800" <= character <= "\udfff" for character in name)
    reorders = not BIDI_CONTROLS.isdisjoint(name)  # right-to-left letters (שלום) are printed as they are
    odd = name != name.strip() or name == UNKNOWN or breaks_lines(name) or undecodable or reorders
    return repr(name) if odd else name


def format_row(result: Identification) -> str:
    top = "  ".join(f"{shown(speaker)} {score:.3f}" for speaker, score in result.top)
    score = {"asnorm": "AS-norm", "plda": "PLDA"}.get(result.score, result.score)
    source = result.threshold_source + (", outdated: the enrolled speakers changed since" if result.threshold_outdated else "")
    decision = shown(result.decision) if result.accepted else result.decision
    return (f"{shown(str(result.clip))}\n  decision: {decision} (threshold {result.threshold:.3f}, {source})\n"
            f"  {score} top-{len(result.top)}: {top}\n"
            f"  softmax: {shown(result.softmax_speaker)} (p={result.softmax_prob:.3f})")


@clean_errors
def identify(
    clips: list[Path] = typer.Argument(..., parser=clip_name,
                                       help="Clips: .pt feature tensors or audio: wav, flac, mp3, ogg, opus, aiff "
                                            "(or folders of them)."),
    index: Path = typer.Option(..., "--index", parser=file_name, metavar="<file>",
                               help="Speaker index written by embed or enroll."),
    ckpt: Path = typer.Option(None, "--ckpt", parser=file_name, metavar="<file>",
                              help="Checkpoint; defaults to the model the index's sidecar names."),
    model: Path = ModelOption,
    top_k: int = typer.Option(5, "--top-k", help="Most speakers to list (a per-utterance index lists those among the max(k, 10) nearest utterances)."),
    threshold: float = typer.Option(None, "--threshold", help="Score under which the decision is 'unknown' (default: "
                                    "the one evaluate --calibrate stored in the index, else 0.5 cosine / 0 PLDA / 2.0 AS-norm)."),
    score_norm: str = typer.Option(None, "--score-norm", help="none (the back end's score: cosine, or PLDA) or asnorm; "
                                   "default: what the index was built with."),
    cohort_top_k: int = typer.Option(None, "--cohort-top-k", help="AS-norm: top-K cohort scores (default: the index's)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
    device: str = DeviceOption,
) -> None:
    """Identify each clip by its nearest enrolled speaker (cosine after the index's back end, PLDA with a plda
    back end, or AS-norm), with the classifier's own answer beside it."""
    check_search_top_k(top_k)
    if score_norm is not None:
        check_choice("--score-norm", score_norm, SCORE_NORMS)
    if cohort_top_k is not None:
        check_top_k(cohort_top_k)
    check_threshold(threshold, None)  # finite here; its range depends on the index's score, checked once it is open
    from voxaug.api.index import IndexData, SpeakerIndex  # torch, FAISS and ONNX Runtime load when the command runs

    model_path = chosen_model(ckpt, model)
    data = IndexData.load(index)  # the index's own errors first, as they always came
    check_clip_files(clips)  # before the model loads and before answering any: not after the clips before a missing one
    speaker_index = SpeakerIndex.from_data(index, data, model_path, device, threads=1, score_norm=score_norm,
                                           cohort_top_k=cohort_top_k, threshold=threshold)
    answered = expand_clips(clips, speaker_index.model.prefers_audio)
    refuse_feature_clips_the_model_cannot_take(answered, speaker_index.model)
    results = []
    for clip in answered:
        result = speaker_index.identify_record(clip, top_k)
        if not results and result.threshold_outdated:
            warn_calibration_outdated(index, speaker_index.data.calibration_outdated())
        if not results and result.threshold_measured is False and not as_json:  # --json says it in each answer
            warn_far_unmeasured(index, speaker_index.data.calibration)
        results.append(result)
        typer.echo(json.dumps(result.to_json()) if as_json else format_row(result))
    if not as_json:
        typer.echo(summary_line(results))


def warn_far_unmeasured(index: Path, calibration: dict) -> None:
    """One stderr line when the calibrated threshold's false-alarm rate was never measured: evaluate --calibrate had
    fewer held-out clips than its target FAR needs (``voxaug.embeddings.calibration.unresolved_far``)."""
    from voxaug.embeddings.calibration import unresolved_far

    reason = unresolved_far(calibration) or "the calibrated threshold's false-alarm rate is unmeasured"
    typer.echo(f"warning: {index}: {reason}", err=True)  # the line evaluate --calibrate printed


def summary_line(results: list[Identification]) -> str:
    """The closing line of the table: how many clips, and how many of them were answered unknown."""
    unknown = sum(not result.accepted for result in results)
    return f"{counted(len(results), 'clip')}: {len(results) - unknown} identified, {unknown} unknown"
