"""`voxaug train DATA --out RUN`: train a speaker classifier; under
`torchrun --nproc_per_node=N -m voxaug train ...` with DistributedDataParallel on N processes."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from voxaug.cli.common import CacheOption, QuietOption, clean_errors, file_name, folder_name, output_folder
from voxaug.errors import VoxaugError, file_error
from voxaug.interrupt import interrupt_prevails
from voxaug.safeio import real_path

if TYPE_CHECKING:
    from voxaug.config import TrainConfig

# Named here, not imported, so that `voxaug train --help` loads no torch; tests/test_lazy_imports.py checks they
# equal voxaug.config.PRESETS and voxaug.augment.AUGMENTATIONS (names, then order of application).
PRESET_NAMES = ("cpu", "strong", "boss", "baseline")
AUGMENTATION_NAMES = ("channel", "crop", "mixup", "noise", "reverb", "specaug", "speed", "wave")
AUGMENTATION_ORDER = ("wave", "speed", "crop", "reverb", "noise", "channel", "specaug", "mixup")
DEFAULT_AUGMENT_NAMES = "reverb,noise"
OPTION_NAMES = {
    "model.kind": "--model", "model.d_model": "--d-model", "model.num_layers": "--layers", "model.num_heads": "--heads",
    "model.embedding_dim": "--embedding-dim", "model.scale": "--scale", "model.margin": "--margin",
    "model.input_norm": "--input-norm", "frontend.n_mels": "--n-mels", "frontend.sample_rate": "--sample-rate",
    "augment.names": "--augment", "augment.specaug.freq_width": "--specaug-freq",
    "augment.specaug.time_width": "--specaug-time", "augment.mixup.alpha": "--mixup-alpha",
    "augment.crop.min_frames": "--crop-min", "augment.crop.max_frames": "--crop-max",
    "augment.channel.max_db": "--channel-db", "augment.reverb.p": "--reverb-p", "augment.noise.noise_dir": "--noise-dir",
    "augment.noise.p": "--noise-p", "augment.wave.noise_dir": "--noise-dir", "augment.wave.noise_p": "--noise-p",
    "augment.wave.rir_dir": "--rir-dir", "augment.wave.rir_p": "--rir-p", "augment.wave.snr_p": "--wave-snr-p",
    "augment.wave.gain_p": "--wave-gain-p",
}
"""The command-line option behind each nested config setting that has one (a top-level setting's is ``--`` plus
its name)."""
FILE_ONLY_SETTINGS = ("grad_clip", "train_eval_utterances", "max_bad_steps", "split_version")
"""Top-level settings that only a --config file sets: no ``--`` option names them."""


@clean_errors
def train(
    data: Path = typer.Argument(..., parser=folder_name,
                                help="Dataset: HW4 folder (mapping.json, metadata.json, uttr-*.pt) or <speaker>/ clip folders."),
    out: Path = typer.Option(..., "--out", parser=folder_name, metavar="<dir>",
                             help="Run folder: config.json, metrics.jsonl, best.pt, last.pt, curves.png."),
    preset: str = typer.Option(None, help=f"Size preset: {', '.join(PRESET_NAMES)} (default: the --config file's "
                               "preset, else cpu)."),
    config: Path = typer.Option(None, "--config", parser=file_name, metavar="<file>",
                                help="TOML file overriding preset fields (\\[model], \\[augment] and \\[frontend] tables), "
                                "or a run's config.json, to train that run again."),
    augment: str = typer.Option(
        None,
        help=f"Comma list of {', '.join(AUGMENTATION_NAMES)}, or 'none'; applied in the fixed order "
        f"{', '.join(AUGMENTATION_ORDER)}, in training only. "
        f"Default: {DEFAULT_AUGMENT_NAMES}, which with the default --input-norm mean did best on held-out speaker sets "
        "from other generators (docs/augmentation.md); add channel when training with --input-norm none.",
    ),
    specaug_freq: int = typer.Option(None, help="specaug: widest frequency mask, in mel bands (default 6)."),
    specaug_time: float = typer.Option(None, help="specaug: widest time mask, frames if >= 1 or a fraction of the real length (default 0.1)."),
    mixup_alpha: float = typer.Option(None, help="mixup: lambda ~ Beta(alpha, alpha) (default 0.3)."),
    crop_min: int = typer.Option(None, help="crop: shortest crop in frames (default 64)."),
    crop_max: int = typer.Option(None, help="crop: longest crop in frames, capped by --segment (default 300)."),
    channel_db: float = typer.Option(None, help="channel: largest amplitude of each EQ cosine term, in dB (default 3)."),
    reverb_p: float = typer.Option(None, help="reverb: probability per utterance (default 0.5)."),
    noise_dir: Path = typer.Option(None, "--noise-dir", parser=folder_name, metavar="<dir>",
                                   help="noise: folder of log-mel .pt noise recordings; wave: folder of background-noise "
                                        "audio (e.g. MUSAN). Goes to whichever of the two --augment names."),
    noise_p: float = typer.Option(None, help="noise or wave: probability of adding background noise (default 0.5)."),
    rir_dir: Path = typer.Option(None, "--rir-dir", parser=folder_name, metavar="<dir>",
                                 help="wave: folder of room impulse responses to convolve with."),
    rir_p: float = typer.Option(None, help="wave: probability of applying a room impulse response (default 0.5)."),
    wave_snr_p: float = typer.Option(None, help="wave: probability of Gaussian noise at 5-40 dB SNR (default 0.5)."),
    wave_gain_p: float = typer.Option(None, help="wave: probability of a -6..+6 dB gain (default 0.5)."),
    steps: int = typer.Option(None, help="Optimizer steps."),
    batch: int = typer.Option(None, help="Batch size."),
    lr: float = typer.Option(None, help="Peak learning rate (AdamW), at most 1e37."),
    warmup: int = typer.Option(None, help="Linear warm-up steps before cosine decay."),
    weight_decay: float = typer.Option(None, "--weight-decay", help="AdamW weight decay (decoupled)."),
    margin_warmup: int = typer.Option(None, "--margin-warmup", help="Steps over which the AM-Softmax margin grows from 0 (0: full margin from the start)."),
    segment: int = typer.Option(None, help="Training segment length in frames."),
    eval_every: int = typer.Option(None, help="Evaluate (clean train and validation accuracy) every N steps."),
    val_fraction: float = typer.Option(None, help="Fraction of each speaker's utterances held out for validation."),
    seed: int = typer.Option(None, help="Seed for the split, sampling, augmentation and initialisation."),
    device: str = typer.Option(None, help="auto (CUDA with mixed precision if present, else CPU), cpu or cuda."),
    amp: bool = typer.Option(None, "--amp/--no-amp", help="Mixed precision (float16) on CUDA; --no-amp trains in "
                             "float32 there too (default --amp; the CPU always uses float32)."),
    model: str = typer.Option(None, "--model", help="conformer or transformer-mean (the homework's sample)."),
    d_model: int = typer.Option(None, help="Model width."),
    layers: int = typer.Option(None, help="Encoder layers."),
    heads: int = typer.Option(None, help="Attention heads."),
    embedding_dim: int = typer.Option(None, help="Speaker embedding size."),
    scale: float = typer.Option(None, help="AM-Softmax scale s."),
    margin: float = typer.Option(None, help="AM-Softmax margin m."),
    input_norm: str = typer.Option(None, "--input-norm", help="mean (default: subtract each utterance's log-mel mean, CMN, "
                                   "which removes a fixed channel) or none (the features as given)."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN from last.pt (optimizer, schedule, RNG and sampler state); "
                                "under torchrun with the same number of processes."),
    n_mels: int = typer.Option(None, "--n-mels", help="Front end: log-mel bins for audio data (default 40); saved in checkpoints."),
    sample_rate: int = typer.Option(None, "--sample-rate", help="Front end: audio is resampled to this rate (default 16000)."),
    workers: int = typer.Option(None, "--workers", help="Processes featurising (and with wave, augmenting) audio; default CPU cores - 1, at most 8."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable audio file instead of skipping and counting it."),
    cache_dir: Path = CacheOption,
    quiet: bool = QuietOption,
) -> None:
    """Train Conformer + masked attentive pooling + AM-Softmax (or the baseline) on DATA.

    Under torchrun every process trains on its own share of each epoch (--batch per process) and
    only rank 0 writes RUN.
    """
    from voxaug.augment.pipeline import parse_names, resolve_names
    from voxaug.config import absolute_folders, check_values, resolve_config
    from voxaug.distributed import RankFailed, init_distributed, shutdown
    from voxaug.train import Trainer

    if workers is not None and workers < 0:  # on a set of features no worker starts, but the value is still wrong
        raise VoxaugError(f"--workers must be >= 0, got {workers}")
    output_folder(out, "--out")  # before minutes of featurising
    refuse_run_in_clip_folders(out, data)
    augment_names = parse_names(augment) if augment is not None else None
    overrides = dict(steps=steps, batch=batch, lr=lr, warmup=warmup, weight_decay=weight_decay,
                     margin_warmup=margin_warmup, segment=segment, eval_every=eval_every,
                     val_fraction=val_fraction, seed=seed, device=device, amp=amp)
    model_overrides = {k: v for k, v in dict(kind=model, d_model=d_model, num_layers=layers, num_heads=heads,
                                             embedding_dim=embedding_dim, scale=scale, margin=margin,
                                             input_norm=input_norm).items() if v is not None}
    augment_overrides = _augment_overrides(augment_names, specaug_freq, specaug_time, mixup_alpha, crop_min, crop_max,
                                           channel_db, reverb_p)
    settings_file = out / "config.json" if (out / "config.json").exists() else out / "last.pt"
    saved = Trainer.config_from_run(out) if resume and settings_file.exists() else None
    if saved is not None:  # a run made before folders were recorded absolute read them against the working directory
        absolute_folders(saved.augment, Path.cwd())
    noise_given = _noise_folder_overrides(augment_names, preset, config, noise_dir, noise_p, saved)
    if noise_given:
        augment_overrides["noise"] = noise_given
        noise_dir = noise_p = None
    wave_given = _wave_overrides(noise_dir, noise_p, rir_dir, rir_p, wave_snr_p, wave_gain_p)
    if wave_given:
        augment_overrides["wave"] = wave_given
    frontend_overrides = _frontend_overrides(n_mels, sample_rate)
    resolved = resolve_config(preset, config, overrides, model_overrides, augment_overrides, frontend_overrides, saved)
    if saved is not None:
        _refuse_changes_on_resume(saved, resolved, settings_file)
    if resolved.augment.get("wave") and "wave" not in resolve_names(resolved.augment):
        keys = set(resolved.augment["wave"])
        given = [_option_name(f"augment.wave.{key}") if key in augment_overrides.get("wave", {})
                 else f"[augment.wave] {key} in {config or 'the run'}" for key in resolved.augment["wave"]]
        owner, add = ("'noise' or 'wave'", "noise or wave") if keys <= {"noise_dir", "noise_p"} else ("'wave'", "wave")
        raise VoxaugError(f"{', '.join(given)}: options of the {owner} augmentation, which --augment does not name; "
                          f"add {add} (e.g. --augment wave,specaug)")
    check_values(resolved)  # every value and strength, before any warning about them and before reading data
    _refuse_options_of_unnamed(augment_overrides, resolve_names(resolved.augment))
    if saved is None:
        given = {f"model.{key}" for key in model_overrides} | {key for key, value in overrides.items()
                                                               if value is not None}
        _refuse_conformer_options_on_the_baseline(resolved, config, given)
    context = init_distributed(resolved.device)
    if resolved.warmup >= resolved.steps and context.is_main:  # said once under torchrun, before any data is read
        typer.echo(f"warning: --warmup {resolved.warmup} is not below --steps {resolved.steps}: the learning rate "
                   "never reaches its cosine decay (lower --warmup)", err=True)
    clean = False
    trainer = None
    try:
        if context.active and context.is_main:
            typer.echo(f"DDP: world_size {context.world_size} ({context.backend}, {context.device.type}); "
                       f"--batch {resolved.batch} per process, {resolved.batch * context.world_size} per step")
        with interrupt_prevails():  # an error after the signal came (a lazy import it broke) is still the interrupt
            trainer = Trainer(resolved, data, out, cache_dir=cache_dir, progress=not quiet, workers=workers,
                              strict=strict, context=context, resume=resume)
            summary = trainer.fit()
        clean = True
    except RankFailed:
        return  # rank 0 prints the error, and its exit status is the run's (torchrun names it the root cause)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the lock and temp files are gone by now, last.pt is whole
        if trainer is None or not context.is_main:
            raise
        raise type(exc)(_interrupted(trainer.step, data, out, context.world_size)) from exc.__cause__
    finally:
        shutdown(context, clean)
    if not context.is_main:
        return
    best = "n/a" if summary.best_val_acc is None else f"{summary.best_val_acc:.4f} at step {summary.best_step}"
    val = "n/a" if summary.val_acc is None else f"{summary.val_acc:.4f}"
    gap = "n/a" if summary.gap is None else f"{summary.gap:+.4f}"
    ranks = f" on {context.world_size} process{'es' if context.world_size > 1 else ''}" if context.active else ""
    typer.echo(
        f"done: {summary.steps} steps{ranks} in {summary.elapsed_s:.0f}s | augment: {','.join(trainer.pipeline.names) or 'none'}\n"
        f"  clean train acc {summary.train_acc:.4f} | val acc {val} | gap (train - val) {gap}\n"
        f"  best val acc {best} -> {out / 'best.pt'} (predict); embed with {out / 'last.pt'}"
        + (f"\n  skipped {summary.skipped_steps} steps with a non-finite loss or gradient"
           if summary.skipped_steps else "")
        + (f"\n  skipped {len(trainer.skipped_files)} unreadable audio files (listed above; --strict makes them an error)"
           if trainer.skipped_files else "")
    )


def refuse_run_in_clip_folders(out: Path, data: Path) -> None:
    """Refuse --out inside (or equal to) a clip-folder DATA, whose first-level folders are speakers: every later read
    of DATA (a resume, embed, evaluate, another train) would take the run's checkpoints for the clips of a speaker
    named after the run, or of no speaker. An HW4 DATA reads only the files its listings name, and a clip folder no
    hidden folder (``.x``), so a run may live there."""
    data_real, out_real = real_path(data), real_path(out)
    if (data_real != out_real and data_real not in out_real.parents) or (data_real / "mapping.json").exists():
        return
    if data_real == out_real:  # the checkpoints at DATA's top: clips of no speaker, refused by every later read
        raise file_error(out, f"--out is DATA {data} itself, whose folders are speakers: the run's checkpoints would "
                              "be read as clips of no speaker, and DATA refused from then on; put the run outside DATA")
    parts = out_real.relative_to(data_real).parts
    if any(part.startswith(".") for part in parts):  # a hidden folder's files are no clips (see files_under)
        return
    raise file_error(out, f"--out lies inside DATA {data}, whose folders are speakers: the run's checkpoints would be "
                          f"read as clips of a speaker {parts[0]!r}; put the run outside DATA")


def _interrupted(step: int, data: Path, out: Path, world_size: int) -> str:
    """Where an interrupted training stopped and how to continue it from what its last.pt holds (read from the file:
    the signal may have landed between its rename and any note of it)."""
    from voxaug.checkpoint import load_checkpoint
    from voxaug.train import train_command

    last = out / "last.pt"
    if not last.is_file():
        return f"interrupted at step {step}, before the first checkpoint: nothing to resume; start the run again"
    try:
        kept = f" (step {int(load_checkpoint(last)['step'])})"
    except (VoxaugError, KeyError, TypeError, ValueError):
        kept = ""
    return (f"interrupted at step {step}; {last}{kept} is kept: continue with "
            f"{train_command(world_size)} {shlex.quote(str(data))} --out {shlex.quote(str(out))} --resume")


def _augment_overrides(
    names: list[str] | None,
    specaug_freq: int | None,
    specaug_time: float | None,
    mixup_alpha: float | None,
    crop_min: int | None,
    crop_max: int | None,
    channel_db: float | None = None,
    reverb_p: float | None = None,
) -> dict:
    """The ``augment`` table the command line sets: names and any strengths given. A whole --specaug-time in range is
    a number of frames; one past the range stays as given, so that its refusal shows it as typed (not 309 digits)."""
    from voxaug.augment.base import MAX_WHOLE

    if specaug_time is not None and 1 <= specaug_time <= MAX_WHOLE and specaug_time == int(specaug_time):
        specaug_time = int(specaug_time)
    tables = {
        "specaug": {"freq_width": specaug_freq, "time_width": specaug_time},
        "mixup": {"alpha": mixup_alpha},
        "crop": {"min_frames": crop_min, "max_frames": crop_max},
        "channel": {"max_db": channel_db},
        "reverb": {"p": reverb_p},
    }
    overrides: dict = {"names": names} if names is not None else {}
    for name, values in tables.items():
        given = {key: value for key, value in values.items() if value is not None}
        if given:
            overrides[name] = given
    return overrides


def _refuse_changes_on_resume(saved: TrainConfig, given: TrainConfig, config_json: Path) -> None:
    """A resumed run keeps the settings it was trained with: an option, --config value or --preset that
    differs from ``config_json`` is refused, naming it; --steps and --device may change."""
    from voxaug.augment.pipeline import resolve_names
    from voxaug.config import changed_settings
    from voxaug.features import FrontendConfig

    if "names" in saved.augment and "names" in given.augment and \
            sorted(resolve_names(saved.augment)) == sorted(resolve_names(given.augment)):
        given.augment["names"] = list(saved.augment["names"])  # applied in a fixed order whatever the spelling
    before, after = saved.to_dict(), given.to_dict()
    before["augment"], after["augment"] = _with_default_strengths(before["augment"], after["augment"])
    if before["frontend"] or after["frontend"]:  # a setting given as its default value changes nothing
        before["frontend"], after["frontend"] = (FrontendConfig.from_dict({"n_mels": before["model"]["n_mels"], **side}).to_dict()
                                                 for side in (before["frontend"], after["frontend"]))
    changed = [name for name in changed_settings(before, after) if name not in ("steps", "device")]
    if changed:
        raise file_error(config_json, f"--resume cannot change {', '.join(map(_option_name, changed))}: the run was "
                                      "trained with the values in this file (only --steps and --device may change; "
                                      "start a new run to change the others)")
    given.augment = copy.deepcopy(saved.augment)  # a strength given at its default value: the run's table as saved


def _with_default_strengths(*sides: dict) -> list[dict]:
    """``augment`` tables with every augmentation table that either side has filled in with its defaults, so that
    ``--reverb-p 0.5`` on a run that left reverb at its default p of 0.5 is not a change."""
    from voxaug.augment.base import AUGMENTATIONS
    from voxaug.augment.pipeline import default_strengths

    tables = {key for side in sides for key in side if key in AUGMENTATIONS}
    filled = []
    for side in sides:
        side = dict(side)
        for key in tables:
            if side.get(key) is not None and not isinstance(side[key], dict):
                continue
            side[key] = {**default_strengths(key), **(side.get(key) or {})}
        filled.append(side)
    return filled


def _refuse_options_of_unnamed(augment_overrides: dict, named: list[str]) -> None:
    """A strength given on the command line for an augmentation that will not run would silently do nothing."""
    for table, values in augment_overrides.items():
        if table != "names" and table not in named:
            given = ", ".join(sorted(_option_name(f"augment.{table}.{key}") for key in values))
            raise VoxaugError(f"{given}: sets the '{table}' augmentation, which --augment does not name "
                              f"({', '.join(named) or 'none'}); add {table} to --augment or leave the option out")


def _refuse_conformer_options_on_the_baseline(resolved: TrainConfig, config: Path | None = None,
                                              given: frozenset[str] | set[str] = frozenset()) -> None:
    """The transformer + mean-pooling baseline has a plain softmax head and no convolution: AM-Softmax's scale,
    margin and margin warm-up and the kernel size, set away from the preset's values, would be recorded as the
    run's and change nothing. Each is named as it was set: its option when in ``given`` (the command line's
    settings) or when there is no ``config`` file, else its key in that file."""
    from voxaug.config import create_config

    if resolved.model.kind != "transformer-mean":
        return
    preset = create_config(resolved.preset)
    changed = [f"model.{key}" for key in ("scale", "margin", "kernel_size")
               if getattr(resolved.model, key) != getattr(preset.model, key)]
    if resolved.margin_warmup != preset.margin_warmup:
        changed.append("margin_warmup")
    unused = [_option_name(setting) if setting in given or config is None else f"{_file_key(setting)} in {config}"
              for setting in changed]
    if unused:
        raise VoxaugError(f"{', '.join(unused)}: the transformer-mean baseline has a plain softmax head and no "
                          "convolution, so these change nothing; drop them or train the conformer")


def _file_key(setting: str) -> str:
    """A setting as a TOML config writes it: ``model.margin`` -> ``[model] margin``, ``margin_warmup`` as it is."""
    table, _, key = setting.rpartition(".")
    return f"[{table}] {key}" if table else key


def _option_name(setting: str) -> str:
    """The option that sets a config setting (``model.num_layers`` -> ``--layers``), else the setting's dotted name
    (a top-level one that only a --config file sets, such as ``grad_clip``, by its key there)."""
    if setting in OPTION_NAMES:
        return OPTION_NAMES[setting]
    if setting in FILE_ONLY_SETTINGS:
        return _file_key(setting)
    return setting if "." in setting else "--" + setting.replace("_", "-")


def _noise_folder_overrides(names: list[str] | None, preset: str | None, config: Path | None, noise_dir: Path | None,
                            noise_p: float | None, saved: TrainConfig | None = None) -> dict:
    """``--noise-dir``/``--noise-p`` for the ``noise`` augmentation when it, not ``wave``, is named.

    Both augmentations take a noise folder (log-mel ``.pt`` files for ``noise``, audio for ``wave``);
    the options go to the one that ``--augment`` (or the default) names, and naming both is refused
    because one folder cannot serve both."""
    from voxaug.augment.pipeline import resolve_names
    from voxaug.config import resolve_config

    if noise_dir is None and noise_p is None:
        return {}
    chosen = set(names if names is not None else resolve_names(resolve_config(preset, config, base=saved).augment))
    if {"noise", "wave"} <= chosen:
        raise VoxaugError("--noise-dir/--noise-p: both 'noise' and 'wave' are named; set [augment.noise] and "
                          "[augment.wave] in a --config TOML file instead")
    if "noise" not in chosen:
        return {}
    values = {"noise_dir": absolute_folder(noise_dir, "--noise-dir"), "p": noise_p}
    return {key: value for key, value in values.items() if value is not None}


def _wave_overrides(
    noise_dir: Path | None,
    noise_p: float | None,
    rir_dir: Path | None,
    rir_p: float | None,
    snr_p: float | None,
    gain_p: float | None,
) -> dict:
    """The ``augment.wave`` table the command line sets; folders are stored absolute, for --resume."""
    values = {"noise_dir": absolute_folder(noise_dir, "--noise-dir"), "noise_p": noise_p,
              "rir_dir": absolute_folder(rir_dir, "--rir-dir"),
              "rir_p": rir_p, "snr_p": snr_p, "gain_p": gain_p}
    return {key: value for key, value in values.items() if value is not None}


def absolute_folder(folder: Path | None, option: str) -> str | None:
    """A noise or RIR folder as the run records it: absolute, for --resume, and ``~`` expanded to the home folder,
    which bash leaves as it is in ``--noise-dir=~/x`` (as ``absolute_folders`` does for a TOML file's)."""
    from voxaug.safeio import home_expanded, resolved_without_loop

    return str(resolved_without_loop(home_expanded(folder, option), option)) if folder else None


def _frontend_overrides(n_mels: int | None, sample_rate: int | None) -> dict:
    """The ``frontend`` table the command line sets (what a sample rate implies is added by ``resolve_config``)."""
    return {key: value for key, value in (("n_mels", n_mels), ("sample_rate", sample_rate)) if value is not None}
