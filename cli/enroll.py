"""`voxaug enroll --index FILE --speaker NAME CLIP…` (or `--speakers-dir DIR`): add or remove speakers without
retraining."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer
from typer.core import TyperCommand

from voxaug.cli.common import (
    DEVICES, DeviceOption, ModelOption, QuietOption, chosen_model, clean_errors, clip_name, expand_clips, file_name,
    folder_name, output_file, warn_calibration_outdated,
)
from voxaug.cli.identify import shown
from voxaug.embeddings.identify import check_speaker_name
from voxaug.errors import VoxaugError, counted, file_error
from voxaug.safeio import utf8_name


@clean_errors
def enroll(
    context: typer.Context,
    clips: list[Path] = typer.Argument(None, parser=clip_name,
                                       help="Enrolment clips (.pt features or audio: wav, flac, mp3, ogg, opus, aiff; "
                                            "or folders of them)."),
    index: Path = typer.Option(..., "--index", parser=file_name, metavar="<file>",
                               help="Speaker index (created when missing, then --ckpt or --model is required)."),
    speaker: str = typer.Option(None, "--speaker", help="Name to enrol."),
    append: bool = typer.Option(False, "--append", help="Add the clips to an already enrolled speaker (updates its centroid)."),
    remove: str = typer.Option(None, "--remove", help="Take this speaker out of the index."),
    speakers_dir: Path = typer.Option(None, "--speakers-dir", parser=folder_name, metavar="<dir>",
                                      help="Enrol every DIR/<speaker>/ folder of clips in one process, one write."),
    ckpt: Path = typer.Option(None, "--ckpt", parser=file_name, metavar="<file>",
                              help="Checkpoint; defaults to the model the index's sidecar names."),
    model: Path = ModelOption,
    per: str = typer.Option(None, "--per", help="For a new index: one centroid per speaker (the default), or every utterance."),
    hnsw: bool = typer.Option(False, "--hnsw", help="For a new index: HNSW instead of exact search."),
    lock_timeout: float = typer.Option(60.0, "--lock-timeout", help="Seconds to wait for another enrol on the same index."),
    device: str = DeviceOption,
    quiet: bool = QuietOption,
) -> None:
    """Enrol a speaker from clips into the FAISS index (or every speaker folder of --speakers-dir), or remove one."""
    # the locale's undecoded bytes as UTF-8, as the names of --speakers-dir's and train's folders are
    speaker, remove = (utf8_name(name) if name is not None else None for name in (speaker, remove))
    refuse_option_names(context, {"--speaker": speaker, "--remove": remove})
    if sum(x is not None for x in (speaker, remove, speakers_dir)) != 1:
        raise VoxaugError("give one of --speaker NAME with clips, --speakers-dir DIR, or --remove NAME")
    if speakers_dir is not None and clips:
        raise VoxaugError("--speakers-dir takes its clips from DIR/<speaker>/ folders; give no clip arguments")
    if speaker is not None and not clips:
        raise VoxaugError(f"--speaker {speaker}: no enrolment clips given")
    if remove is not None and (clips or ckpt or model or per or hnsw or append):
        raise VoxaugError(f"--remove {remove}: takes only --index (and --lock-timeout); clips, --ckpt, --model, "
                          "--per, --hnsw and --append are for enrolling")
    output_file(index, "--index")
    from voxaug.api.index import SpeakerIndex, remove_speaker  # torch, FAISS and ONNX Runtime load only when it runs
    from voxaug.embeddings.backend import check_choice
    from voxaug.embeddings.index import MODES, check_lock_timeout, sidecar_path

    check_lock_timeout(lock_timeout)
    check_choice("--device", device, DEVICES)  # --remove never reads it: checked here so that it is refused there too
    if per is not None:
        check_choice("--per", per, MODES)
    model_path = chosen_model(ckpt, model)
    if remove is not None:
        remaining = remove_speaker(index, remove, lock_timeout)
        left = len(remaining.speakers)
        typer.echo(f"removed {shown(remove)}; {counted(left, 'speaker')} {'remains' if left == 1 else 'remain'} "
                   f"in {index}")
        warn_calibration_outdated(index, remaining.calibration_outdated())
        return
    if index.exists() or sidecar_path(index).exists():  # a first write cut short leaves the sidecar alone
        speaker_index = SpeakerIndex.open(index, model_path, device)
        kept = speaker_index.data
        if (per is not None and per != kept.mode) or (hnsw and not kept.hnsw):
            raise file_error(index, f"--per and --hnsw shape a new index, and this one is per {kept.mode} with "
                                    f"{'HNSW' if kept.hnsw else 'exact'} search; build another to change them")
    elif model_path is None:
        raise VoxaugError(f"{index}: index does not exist yet; pass --ckpt or --model to create it")
    else:
        speaker_index = SpeakerIndex.create(index, model_path, per or "speaker", hnsw, device)
    audio_first = speaker_index.model.prefers_audio
    if speakers_dir is not None:
        enrolments = speaker_folders(speakers_dir, audio_first)
        new = sorted(name for name, spelled in speaker_index.data.spellings(enrolments).items()
                     if spelled not in speaker_index.data.counts)
        speaker_index.enroll_many(enrolments, append, lock_timeout, progress=not quiet)
        skipped = sum(speaker_index.skipped.values())
        added = {name: len(clips) - speaker_index.skipped[name] for name, clips in enrolments.items()}
        grown = sum(count > 0 for count in added.values())
        typer.echo(f"enrolled {counted(grown, 'speaker')} from {counted(sum(added.values()), 'clip')}"
                   f"{skipped_note(skipped)}; {counted(len(speaker_index.speakers), 'speaker')} in {index}"
                   f"{new_names_note(new) if append else ''}")
        warn_calibration_outdated(index, speaker_index.data.calibration_outdated())
        return
    enrolment = expand_clips(clips, audio_first)
    count = speaker_index.enroll(speaker, enrolment, append, lock_timeout)
    skipped = speaker_index.skipped[speaker]
    typer.echo(f"enrolled {shown(speaker)} from {counted(len(enrolment) - skipped, 'clip')} ({count} in all)"
               f"{skipped_note(skipped)}; {counted(len(speaker_index.speakers), 'speaker')} in {index}")
    if append and count == len(enrolment) - skipped:  # all its clips are these: it was not enrolled before
        typer.echo(f"warning: {shown(speaker)} was not enrolled, so --append enrolled it as a new speaker (a misspelt "
                   f"name? remove it with {option_given('--remove', speaker)})", err=True)
    warn_calibration_outdated(index, speaker_index.data.calibration_outdated())


ATTACHED_WORDS = "voxaug.enroll.attached"
"""``context.meta`` key of the ``--option=value`` words enroll was given (:class:`EnrollCommand`)."""


class EnrollCommand(TyperCommand):
    """enroll's command: notes the words that attach a value to an option with ``=`` before Click parses them, as
    ``--remove=--index`` is the one spelling in which an option's name given as a speaker's is surely meant as one
    (:func:`refuse_option_names`); once parsed, it cannot be told from ``--remove --index``."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        ctx.meta[ATTACHED_WORDS] = attached_words(args)
        return super().parse_args(ctx, args)


def attached_words(args: list[str]) -> set[str]:
    """The ``--option=value`` words of ``args`` before ``--``, after which every word is a clip."""
    options = args[:args.index("--")] if "--" in args else args
    return {word for word in options if word.startswith("--") and "=" in word}


def refuse_option_names(context: typer.Context, names: dict[str, str | None]) -> None:
    """Refuse a speaker name that is one of this command's options: Click takes the word after ``--remove`` as its
    value whatever it is, so ``enroll --remove --help`` looked for a speaker named ``--help`` instead of showing help.
    A name attached to its option (``--remove=--index``) is kept, so that a speaker enrolled from a folder named like
    an option can still be removed; so are other names that start with ``-`` (a folder can be named so), and the
    names of its arguments (``clips``), which are never typed."""
    options = {name for parameter in context.command.get_params(context) if parameter.param_type_name == "option"
               for name in parameter.opts + parameter.secondary_opts}
    attached = context.meta.get(ATTACHED_WORDS, set())
    for option, name in names.items():
        if name in options and f"{option}={name}" not in attached:
            raise VoxaugError(f"{option} {name}: {name} is an option of enroll, not a speaker name; give the name "
                              f"right after {option} (for help: voxaug enroll --help); for a speaker of that name, "
                              f"attach it: {option_given(option, name)}")


def option_given(option: str, name: str) -> str:
    """``option`` with the speaker ``name`` as shell words that read back as that name: attached with ``=`` when the
    name starts with ``-``, as one named like an option of enroll is taken only so (:func:`refuse_option_names`)."""
    return f"{option}={shell_word(name)}" if name.startswith("-") else f"{option} {shell_word(name)}"


def shell_word(name: str) -> str:
    """``name`` as a shell word that reads back as the same speaker: ``shlex.quote`` of text, and for a name holding
    bytes that are not UTF-8 (``os.fsdecode``'s surrogates, which ``repr`` shows as ``\\udcff`` and no one can type)
    bash's ``$'...'`` with those bytes as ``\\xff``, the bytes the word was given in."""
    if not any("\udc80" <= character <= "\udcff" for character in name):
        return shlex.quote(name)
    try:
        given = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # other surrogates too: no bytes spell it, so no shell can give it back
        return repr(name)
    return "$'" + "".join(chr(byte) if 0x20 <= byte < 0x7F and chr(byte) not in "'\\" else f"\\x{byte:02x}"
                          for byte in given) + "'"


def new_names_note(names: list[str]) -> str:
    """Which folders --append enrolled as speakers the index did not hold, so that a misspelt folder name shows."""
    if not names:
        return ""
    listed = ", ".join(shown(name) for name in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f" ({len(names)} new: {listed})"


def skipped_note(skipped: int) -> str:
    """What --append left out: clips the speakers were already enrolled from, which would count twice."""
    return f", skipping {counted(skipped, 'clip')} already enrolled" if skipped else ""


def speaker_folders(folder: Path, audio_first: bool = False) -> dict[str, list[Path]]:
    """DIR/<speaker>/ folders and their clips, by speaker name; clip files directly in DIR are refused (other files,
    such as VCTK's ``log.txt``, are left alone, as a dataset's clip folders leave them), and speakers whose every clip
    lies three or more folders down are warned of, as a dataset's are (DIR is likely the folder above the speakers)."""
    if not folder.is_dir():
        raise VoxaugError(f"{folder}: --speakers-dir must be a folder of <speaker>/ clip folders")
    from voxaug.clips import FEATURE_SUFFIX, deepest_speakers, loose_clips, nested_speakers_warning
    from voxaug.progress import print_warning
    from voxaug.runtime.frontend import audio_suffixes

    stray = loose_clips(folder, (FEATURE_SUFFIX,) + audio_suffixes())
    if stray:
        raise VoxaugError(f"{folder}: --speakers-dir holds files ({', '.join(stray[:3])}); clips go in DIR/<speaker>/")
    speakers = {utf8_name(sub.name): expand_clips([sub], audio_first) for sub in sorted(folder.iterdir())
                if sub.is_dir() and not sub.name.startswith(".")}
    if not speakers:
        raise VoxaugError(f"{folder}: no <speaker>/ folders to enrol")
    for name in speakers:
        try:
            check_speaker_name(name)
        except VoxaugError as exc:
            raise file_error(folder / name, f"{exc} (the folder's name is the speaker's)") from None
    nested = deepest_speakers([(name, clip.relative_to(folder).as_posix()) for name, clips in speakers.items()
                               for clip in clips])
    if nested:  # `--speakers-dir LibriSpeech/` enrolled its subsets as two speakers without a word
        print_warning(nested_speakers_warning(folder, nested, len(speakers), "--speakers-dir"))
    return speakers
