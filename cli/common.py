"""What every command shares: clean one-line errors, the --debug switch, common option types."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

import typer
from typer.core import TyperGroup
from typer.models import OptionInfo

from voxaug.errors import VoxaugError, export_as_checkpoint, file_error, not_a_file
from voxaug.interrupt import SIGTERM_EXIT, Terminated, sigterm_as_interrupt
from voxaug.safeio import SYMLINK_LOOP, home_expanded, import_torch, is_symlink_loop, real_path

if TYPE_CHECKING:
    from voxaug.api.model import SpeakerModel
    from voxaug.data.split import RecordedSplit

F = TypeVar("F", bound=Callable)
DEBUG_ENV = "VOXAUG_DEBUG"
TRAIN_EXTRA_MODULES = ("torch", "torchaudio", "sklearn", "scipy", "audiomentations", "matplotlib", "onnx", "tomli")


_debug_flag = False
_command_line = ("voxaug", "COMMAND")
"""The program as this invocation was started and its command's name (see :func:`note_command_line`)."""


def set_debug(enabled: bool) -> None:
    """Set by ``voxaug --debug`` for this invocation only (a test runner may invoke many in one process)."""
    global _debug_flag
    _debug_flag = enabled


def note_command_line(program: str, command: str | None) -> None:
    """Set by the app's callback for each invocation: the program as it was started (``voxaug``, or ``python -m
    voxaug`` where the script is not on PATH, as the usage line names it) and the command's name, not its function's,
    so that :func:`debug_hint` names a command line that can be typed as it is."""
    global _command_line
    _command_line = (program, command or "COMMAND")


SHARED_WORK_COMMANDS = ("train", "embed")
"""The commands that share their work among torchrun's processes (``embed`` with ``--ckpt``; see docs/scaling.md)."""


def leave_to_rank_0(command: str) -> bool:
    """Under torchrun with several processes, a command that does not share its work runs on rank 0 alone: True on
    the other ranks, which stop at once. Each process did all of it, printed everything once per process and wrote
    the same files (and cache, and index sidecar) together. Read from torchrun's variables: no torch is loaded."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if os.environ.get("RANK", "0") != "0":
        return True
    typer.echo(f"note: {command} does not share its work among processes: rank 0 runs it alone and the other ranks "
               "stop (run it without torchrun)", err=True)
    return False


def debug_enabled() -> bool:
    """``--debug`` on this invocation, or ``VOXAUG_DEBUG`` set to anything but empty or 0."""
    return _debug_flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


SIGPIPE_EXIT = 128 + 13  # the status a shell gives a program that the broken-pipe signal ended


def clean_errors(function: F) -> F:
    """Turn a VoxaugError into ``error: <message>`` and exit code 2; tracebacks only with --debug. Ctrl-C and SIGTERM
    stop the command as one line too, with the shell's status for them (130, 143). Every path option has its
    ``~`` expanded here (see ``path_options``)."""
    options = path_options(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_as_interrupt():
                for name, option in options.items():
                    if isinstance(kwargs.get(name), Path):
                        kwargs[name] = home_expanded(kwargs[name], option)
                return function(*args, **kwargs)
        except VoxaugError as exc:
            if debug_enabled():
                raise
            raise fail(str(exc)) from None
        except ModuleNotFoundError as exc:
            root = (exc.name or "").split(".")[0]
            if root not in TRAIN_EXTRA_MODULES or debug_enabled():
                raise
            raise fail(f"{function.__name__}: this needs {root}, which the runtime-only install leaves out; "
                       'install the train extra: pip install "voxaug[train]"') from None
        except KeyboardInterrupt as exc:
            if exc.__cause__ is not None and debug_enabled():  # the error it stood for (see interrupt_prevails)
                typer.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
            raise fail(str(exc) or "interrupted", SIGTERM_EXIT if isinstance(exc, Terminated) else 130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BrokenPipeError:  # `voxaug identify DIR | head`: the reader has gone; stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # so the flush at exit cannot fail on the closed pipe
            raise typer.Exit(SIGPIPE_EXIT) from None
        except OSError as exc:  # the file system said no: name the file when the error does
            if debug_enabled():
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            raise fail(f"{where}{exc.strerror or exc}") from None
        except Exception as exc:  # a bug, not bad input: still one line unless --debug
            if debug_enabled():
                raise
            raise fail(f"unexpected {type(exc).__name__}: {exc} ({debug_hint()})", 3) from None

    return wrapper  # type: ignore[return-value]


def debug_hint() -> str:
    """How to see the traceback of this invocation's unexpected error: --debug is the app's option, taken before the
    command's name (``voxaug train … --debug`` is refused as an unknown option of train), or the variable."""
    program, command = _command_line
    return f"for the traceback, run it again as `{program} --debug {command} …` or with {DEBUG_ENV}=1"


def path_options(function: Callable) -> dict[str, str]:
    """The options of a command (parameter name -> its ``--name``) whose ``~`` or ``~user`` the command expands, as
    ``home_expanded`` does for --noise-dir and VOXAUG_CACHE: bash leaves it as it is in ``--out=~/x``, which would
    make a folder named ``~``. Every option, so that none is left out; arguments are the shell's to expand."""
    options = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if isinstance(parameter.default, OptionInfo):
            long = [decl for decl in parameter.default.param_decls if decl.startswith("--")]
            options[name] = long[0] if long else "--" + name.replace("_", "-")
    return options


def declared_defaults(command: Callable) -> dict[str, Any]:
    """Each option's default as ``command`` declares it: a check of whether an option was given away from its default
    reads it here, so that changing a default in the declaration cannot make it a refused value."""
    return {name: parameter.default.default for name, parameter in inspect.signature(command).parameters.items()
            if isinstance(parameter.default, OptionInfo)}


def _is_usage_error(exc: BaseException) -> bool:
    """Click's UsageError (an unknown option, a value of the wrong type, a missing argument), but not the
    request for help that a bare ``voxaug`` raises. By name: Typer vendors Click in its newer releases."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return "UsageError" in names and "NoArgsIsHelpError" not in names


@contextlib.contextmanager
def _usage_errors_in_one_line() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        context = getattr(exc, "ctx", None)
        message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        if context is None:
            raise fail(message) from None
        raise fail(f"{context.command_path}: {message} (see {context.command_path} --help)") from None


SCRIPT_NAME = "voxaug"
"""The console script (pyproject.toml's ``[project.scripts]``): what shell completion completes."""
COMPLETION_OPTIONS = ("install_completion", "show_completion")


def completion_for_the_script(callback: Callable) -> Callable:
    """Typer's --install-completion or --show-completion callback, writing the script for ``voxaug`` however the CLI
    was started. It names the program as the usage line does, so under ``python -m voxaug`` it wrote a script that
    registered completion for ``python`` and ``-m`` and ran ``env _PYTHON _M VOXAUG_COMPLETE=...``, which fails."""
    if getattr(callback, "for_the_script", False):
        return callback

    @functools.wraps(callback)
    def for_the_script(context: Any, parameter: Any, value: Any) -> Any:
        if value and not context.resilient_parsing:
            context.find_root().info_name = SCRIPT_NAME
        return callback(context, parameter, value)

    for_the_script.for_the_script = True  # type: ignore[attr-defined]
    return for_the_script


class OneLineUsageErrors(TyperGroup):
    """The app's command group: a usage error is one ``error:`` line and exit 2, as every other bad input is,
    instead of Typer's boxed usage text. Parsing happens in ``make_context`` (the group's options) and in
    ``invoke`` (the command's), so both are covered. Shell completion is for the ``voxaug`` script, also when
    asked for under ``python -m voxaug`` (Typer adds its options after the group is made, so they are set here)."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        for parameter in self.params:
            if parameter.name in COMPLETION_OPTIONS and parameter.callback is not None:
                parameter.callback = completion_for_the_script(parameter.callback)
        with _usage_errors_in_one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with _usage_errors_in_one_line():
            return super().invoke(ctx)


def folder_name(text: str) -> Path:
    """Parser of a folder option: an empty name is refused, as ``Path("")`` is the working directory, which would be
    read as the folder (``--noise-dir "$NOISE"`` with the variable unset scanned it for noise). So is a name of only
    whitespace (``"$DIR "`` unset), a folder that every message would print as nothing (``-> /best.pt``)."""
    if not text:
        raise typer.BadParameter("an empty folder name (it would mean the working directory); give a folder")
    if not text.strip():
        raise typer.BadParameter(f"a folder name of only whitespace ({text!r}); give a folder")
    return Path(text)


def file_name(text: str) -> Path:
    """Parser of a file option or argument: an empty name is refused by name, not as ``.`` (``Path("")``), which the
    messages would call a folder (``--ckpt "$CKPT"`` with the variable unset: ``.: expected a checkpoint file``); so
    is one of only whitespace, as :func:`folder_name` refuses it."""
    if not text.strip():
        raise typer.BadParameter("an empty file name; give a file" if not text else
                                 f"a file name of only whitespace ({text!r}); give a file")
    return Path(text)


def clip_name(text: str) -> Path:
    """Parser of a clip argument (a clip file or a folder of them): an empty name is refused, as ``Path("")`` is the
    working directory, every clip under which would be identified or enrolled."""
    if not text:
        raise typer.BadParameter("an empty name (it would mean every clip under the working directory); give a clip "
                                 "file or folder")
    if not text.strip():
        raise typer.BadParameter(f"a name of only whitespace ({text!r}); give a clip file or folder")
    return Path(text)


CacheOption = typer.Option(None, "--cache-dir", parser=folder_name, metavar="<dir>",
                           help="Packed feature store folder (default $VOXAUG_CACHE or ~/.cache/voxaug).")
DEVICES = ("auto", "cpu", "cuda")  # voxaug.config.DEVICES, not imported so that torch loads only when a command runs
DeviceOption = typer.Option("auto", "--device", help="auto (CUDA if present, else CPU), cpu or cuda.")
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def existing_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise VoxaugError(f"{path}: {what} not found")
    if not path.is_file():
        raise file_error(path, not_a_file(path, what))
    return path


def output_folder(path: Path, option: str) -> Path:
    """Refuse, before any work, an output folder that is an existing file, lies under one, or under a symbolic
    link to nothing."""
    if path.exists() and not path.is_dir():
        raise VoxaugError(f"{path}: {option} is an existing file; expected a folder")
    _refuse_blocked_folders(path, option, (path, *path.absolute().parents))
    return path


def output_file(path: Path, option: str) -> Path:
    """Refuse, before any work, an output file that is an existing folder, or whose folder cannot be created (it
    lies under a file). The folders checked are those the writers write in: links resolved (``real_path``), so a link
    to a folder not made yet is taken, as they create it."""
    if path.is_dir():
        raise VoxaugError(f"{path}: {option} is an existing folder; expected a file name")
    real = real_path(path)
    if real.is_symlink():  # realpath leaves a symlink loop as it is, and the writers would replace the link
        raise VoxaugError(f"{path}: {option} cannot be created: {_broken_link(real)}")
    _refuse_blocked_folders(path, option, real.parents)
    return path


def _refuse_blocked_folders(path: Path, option: str, places: Iterable[Path]) -> None:
    """The first of ``places`` (a folder, then the folders above it) that exists must be a folder, and none before it
    a symbolic link to nothing (or a loop): else the folder ``path`` is written in cannot be created."""
    for place in places:
        if place.is_symlink() and not place.exists():
            raise VoxaugError(f"{path}: {option} cannot be created: {_broken_link(place)}")
        if place.exists():
            if not place.is_dir():
                raise VoxaugError(f"{path}: {option} cannot be created: {place} is a file, not a folder")
            return


def _broken_link(link: Path) -> str:
    """What is wrong with a symbolic link that leads to no file: a loop (as the API says it), or a missing target."""
    return f"{link} is a {SYMLINK_LOOP}" if is_symlink_loop(link) else f"{link} is a symbolic link to nothing"


def check_training_speakers(data: Path, dataset_speakers: list[str], model_speakers: list[str], purpose: str) -> None:
    """Refuse DATA unless it holds the speakers the model was trained on, in its order: the commands that rebuild
    the run's training split from it (``purpose`` says why) would otherwise split other clips."""
    if list(dataset_speakers) != list(model_speakers):
        raise file_error(data, f"its {len(dataset_speakers)} speakers are not the {len(model_speakers)} the model was "
                               f"trained on, in its order; {purpose}")


def warn_of_changed_clips(data: Path, keys: list[str], record: dict | None, trained_count: int | None,
                          outcome: Callable[[RecordedSplit], str], warn: bool = True) -> RecordedSplit | None:
    """The run's split as its record of its clips finds it in DATA now (``voxaug.data.split.RecordedSplit``), with one
    stderr line where clips were added or removed since training (``outcome`` of that split says what the command
    does about it). None for a run without the record: then a line only where its clip count changed. ``warn``:
    false on all but one of torchrun's processes."""
    from voxaug.data.split import changed_clips_warning, changed_count_warning, recorded_split

    if record is None:
        if warn and trained_count is not None and trained_count != len(keys):
            typer.echo(changed_count_warning(data, len(keys), trained_count), err=True)
        return None
    found = recorded_split(keys, record)
    if warn and (found.added or found.removed):
        typer.echo(changed_clips_warning(data, found, outcome(found)), err=True)
    return found


def expand_clips(paths: list[Path], audio_first: bool = False) -> list[Path]:
    """Clip arguments as files: a folder stands for every clip under it (one file per clip, its audio rather
    than its `.pt` twin with ``audio_first``: for an export that takes audio). A folder's audio of a format that is
    no clip (``x.m4a``, listed so that it is named) is refused here, before any clip is answered or embedded."""
    from voxaug.clips import FEATURE_SUFFIX, one_file_per_clip
    from voxaug.runtime.frontend import audio_suffixes

    clips: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = one_file_per_clip(path, (FEATURE_SUFFIX,) + audio_suffixes(), audio_first)
            if not found:
                raise VoxaugError(f"{path}: folder holds no clips ({', '.join((FEATURE_SUFFIX,) + audio_suffixes())})")
            for clip in found:
                refuse_unsupported_clip_type(clip)
            clips += found
        else:
            clips.append(path)
    return clips


def refuse_unsupported_clip_type(path: Path) -> None:
    """Refuse a clip file that is neither `.pt` features nor audio read here, naming it."""
    from voxaug.clips import FEATURE_SUFFIX
    from voxaug.runtime.frontend import audio_suffixes, unsupported_format

    accepted = (FEATURE_SUFFIX,) + audio_suffixes()
    if path.suffix.lower() not in accepted:
        raise file_error(path, unsupported_format(path, "clip type", accepted))


def check_clip_files(paths: list[Path]) -> None:
    """Refuse, before any work, a clip argument that is neither a folder nor a clip file (.pt or audio) that
    exists: a command that answers clip by clip would otherwise stop at it after answering the clips before it."""
    for path in paths:
        if path.is_dir():
            continue
        refuse_unsupported_clip_type(path)
        if not path.is_file():
            raise file_error(path, "clip not found" if not path.exists() else not_a_file(path, "clip"))


def refuse_feature_clips_the_model_cannot_take(clips: list[Path], model: SpeakerModel) -> None:
    """Refuse, before any clip is answered, a `.pt` clip that reading it would refuse (a model trained from audio at
    other front-end settings, no torch to read it, an export that takes audio only), with the error reading gives: a
    command that answers clip by clip would otherwise stop at it after answering the clips before it."""
    from voxaug.api.engines import features_for_an_audio_model
    from voxaug.clips import FEATURE_SUFFIX

    for clip in clips:
        if clip.suffix.lower() == FEATURE_SUFFIX:
            model.engine.frontend.refuse_feature_file(clip)
            import_torch(clip, "feature file")
            if model.takes_audio_only:
                raise features_for_an_audio_model(clip, model.engine.frontend.sample_rate)


ModelOption = typer.Option(None, "--model", parser=file_name, metavar="<file>",
                           help="ONNX model from `voxaug export` (instead of --ckpt; needs no torch).")


def chosen_model(ckpt: Path | None, model: Path | None) -> Path | None:
    """The model file that --ckpt or --model names (not both); None leaves the choice to the index's sidecar."""
    if ckpt is not None and model is not None:
        raise VoxaugError("--ckpt and --model name two models; give one (a checkpoint .pt or an ONNX export .onnx)")
    if ckpt is not None and ckpt.suffix.lower() == ".onnx" and ckpt.is_file():
        raise export_as_checkpoint(ckpt)
    return ckpt if ckpt is not None else model


def warn_calibration_outdated(index: Path, outdated: str | None) -> None:
    """One stderr line when the index's calibrated threshold predates its enrolled speakers (stdout stays the answers)."""
    if outdated is not None:
        typer.echo(f"warning: {index}: {outdated}", err=True)
