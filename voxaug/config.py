"""Training configuration: one dataclass, presets by name, overrides from TOML and the command line.

Precedence is preset < TOML file < command line. Unknown keys are refused, never ignored.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from voxaug.augment.base import AUGMENTATIONS, MAX_WHOLE
from voxaug.augment.pipeline import build_pipeline, resolve_names
from voxaug.data.split import SPLIT_VERSION, SPLIT_VERSIONS
from voxaug.errors import VoxaugError, abridged, file_error, not_a_file, refuse_unknown_keys
from voxaug.features import FrontendConfig
from voxaug.model import INPUT_NORM_BEFORE_IT_EXISTED, ModelConfig
from voxaug.runtime.training_split import TrainingSplit
from voxaug.safeio import home_expanded, read_json, resolved_without_loop

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, published as tomli before Python 3.11 took it in as tomllib
    import tomli as tomllib

DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**32 - 1
"""numpy refuses negative seeds and its global ``np.random.seed`` (the wave augmentation's) takes 32 bits."""
MAX_LR = 1e37
"""Largest --lr: AdamW's first steps move each weight by up to 10 times the rate, a float32 number (at most 3.4e38);
a larger one crashed at the first step instead of being refused up front."""
MAX_SCALE = 1e37
"""Largest AM-Softmax --scale: the logits are scale times a cosine in float32 (at most 3.4e38); a larger one made
every loss Inf, and the run stopped after max_bad_steps steps instead of being refused up front."""
DERIVED_MODEL_KEYS = ("n_mels", "num_classes", "num_speakers")
"""Model settings a run takes from its data (and a checkpoint records), which a config may not set."""


@dataclass
class TrainConfig:
    """Everything a run needs besides its data; written to ``RUN/config.json`` and every checkpoint."""

    preset: str = "cpu"
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: dict[str, Any] = field(default_factory=dict)
    frontend: dict[str, Any] = field(default_factory=dict)
    steps: int = 2000
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 200
    margin_warmup: int = 0
    grad_clip: float = 5.0
    segment: int = 128
    eval_every: int = 200
    val_fraction: float = 0.1
    split_version: int = SPLIT_VERSION
    """How the validation split keeps recording groups whole (``voxaug.data.split``); a saved run without it is 1."""
    train_eval_utterances: int = 400
    max_bad_steps: int = 20
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    """Mixed precision on CUDA (float16 autocast with a GradScaler); the CPU always trains in float32."""

    def validate(self) -> None:
        self.model.validate()
        self.model.check_fits_memory()
        if not isinstance(self.frontend, dict):
            raise VoxaugError(f"[frontend] must be a table of front-end settings, got {self.frontend!r}")
        if not isinstance(self.augment, dict):
            raise VoxaugError(f"[augment] must be a table of augmentation settings, got {self.augment!r}")
        frontend = FrontendConfig.from_dict(self.frontend)  # refuses unknown keys and bad values
        if frontend.log_floor <= 0:  # log(mel + floor): silence would be -inf or NaN, and its clip skipped as unreadable
            raise VoxaugError(f"front end: log_floor must be > 0 to train, got {frontend.log_floor}")
        for name in ("steps", "batch", "segment", "eval_every", "train_eval_utterances", "max_bad_steps"):
            if not 0 < getattr(self, name) <= MAX_WHOLE:
                raise VoxaugError(f"--{name.replace('_', '-')} must be a whole number in [1, {MAX_WHOLE}], "
                                  f"got {getattr(self, name)}")
        if self.model.kind == "conformer" and self.batch < 2:  # its BatchNorms need two examples to train
            raise VoxaugError(f"--batch must be at least 2 for the conformer (its batch norms need two examples), "
                              f"got {self.batch}")
        for name in ("warmup", "margin_warmup"):
            if not 0 <= getattr(self, name) <= MAX_WHOLE:
                raise VoxaugError(f"--{name.replace('_', '-')} must be a whole number in [0, {MAX_WHOLE}], "
                                  f"got {getattr(self, name)}")
        for name, value in (("--lr", self.lr), ("--weight-decay", self.weight_decay), ("grad_clip", self.grad_clip),
                            ("--scale", self.model.scale), ("--margin", self.model.margin)):
            if not math.isfinite(value):
                raise VoxaugError(f"{name} must be a finite number, got {value}")
        if not self.lr > 0:
            raise VoxaugError(f"--lr must be positive, got {self.lr}")
        if self.lr > MAX_LR:
            raise VoxaugError(f"--lr must be at most {MAX_LR:g} (AdamW steps in float32), got {self.lr:g}")
        if self.model.scale > MAX_SCALE:
            raise VoxaugError(f"--scale must be at most {MAX_SCALE:g} (the logits are float32), got {self.model.scale:g}")
        if self.weight_decay < 0:
            raise VoxaugError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.lr * self.weight_decay >= 1:  # AdamW's decay step: weight *= 1 - lr * weight_decay
            raise VoxaugError(f"--weight-decay {self.weight_decay:g} times --lr {self.lr:g} must be below 1 (AdamW "
                              "multiplies every weight by 1 - lr x weight decay each step), got "
                              f"{self.lr * self.weight_decay:g}")
        if self.grad_clip <= 0:  # set only in a --config file, so named by its key there
            raise VoxaugError(f"grad_clip must be > 0, got {self.grad_clip}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise VoxaugError(f"--seed must be a whole number in [0, {MAX_SEED}], got {self.seed}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise VoxaugError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.split_version not in SPLIT_VERSIONS:
            raise VoxaugError(f"split_version must be one of {', '.join(map(str, SPLIT_VERSIONS))}, got {abridged(self.split_version)}")
        if self.device not in DEVICES:
            raise VoxaugError(f"--device {abridged(self.device)} is not known; accepted: {', '.join(DEVICES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def training_split(self) -> TrainingSplit:
        """What fixes the run's training and validation utterances, as a model file records it."""
        return TrainingSplit(self.seed, self.val_fraction, self.split_version)

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> "TrainConfig":
        """Build from plain values (config.json, a checkpoint, TOML); unknown keys and wrong types are refused."""
        if not isinstance(values, dict):
            raise VoxaugError(f"{where}: expected a table of settings, got {type(values).__name__}")
        values = dict(values)
        model_values = values.pop("model", {})
        if not isinstance(model_values, dict):
            raise VoxaugError(f"{where}: [model] must be a table, got {type(model_values).__name__}")
        refuse_unknown_keys(values, cls, where)
        check_types(values, cls, where)
        check_types(model_values, ModelConfig, f"{where} [model]")
        return cls(model=ModelConfig.from_dict(model_values), **values)

    @classmethod
    def from_saved(cls, values: dict, where: str = "config") -> "TrainConfig":
        """A run's own config (config.json, a checkpoint), read with what it was trained with where it was saved
        before a setting existed (``with_versioned_defaults``)."""
        return cls.from_dict(with_versioned_defaults(values), where)


def with_versioned_defaults(values: Any) -> Any:
    """A run's saved settings plus the values a run saved before a setting existed was trained with: split version 1
    and raw features (``input_norm`` none), not today's defaults."""
    if not isinstance(values, dict):
        return values
    values = {"split_version": 1, **values}
    if isinstance(values.get("model"), dict):
        values["model"] = {"input_norm": INPUT_NORM_BEFORE_IT_EXISTED, **values["model"]}
    return values


SCALAR_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def check_types(values: dict, kind: type, where: str) -> None:
    """Each scalar setting of the type its dataclass field declares (a TOML ``steps = "many"`` fails here)."""
    declared = {f.name: f.type for f in fields(kind)}
    for key, value in values.items():
        accepted = SCALAR_TYPES.get(str(declared.get(key)))
        if accepted is None:
            continue
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
            raise VoxaugError(f"{where}: {key} must be {'a' if accepted[-1] is not int else 'an'} "
                              f"{accepted[-1].__name__}, got {abridged(value)}")


def _merge_tables(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win key by key, one level deep, so ``--mixup-alpha`` keeps the TOML's other mixup keys."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if not isinstance(layer, dict):
            raise VoxaugError(f"[augment] must be a table, got {layer!r}")
        for key, value in layer.items():
            both_tables = isinstance(value, dict) and isinstance(merged.get(key), dict)
            merged[key] = {**merged[key], **value} if both_tables else value
    return merged


PRESETS: dict[str, Callable[[], TrainConfig]] = {}


def register_preset(function: Callable[[], TrainConfig]) -> Callable[[], TrainConfig]:
    """Register a preset under its function's name (underscores become hyphens)."""
    PRESETS[function.__name__.replace("_", "-")] = function
    return function


@register_preset
def cpu() -> TrainConfig:
    """Small Conformer that trains in minutes on 2 CPU cores (the demo and benchmark preset)."""
    return TrainConfig(preset="cpu")


@register_preset
def strong() -> TrainConfig:
    """The homework's strong baseline size: Conformer, 4 heads, 6 layers, lr 5e-4, warm-up 2000."""
    model = ModelConfig(d_model=80, num_heads=4, ffn_dim=256, num_layers=6, kernel_size=31, dropout=0.1)
    return TrainConfig(preset="strong", model=model, steps=70000, lr=5e-4, warmup=2000, eval_every=2000)


@register_preset
def boss() -> TrainConfig:
    """The homework's boss baseline size: d_model 300, 6 heads, 8 layers, dropout 0.15, lr 1e-3, warm-up 5000."""
    model = ModelConfig(d_model=300, num_heads=6, ffn_dim=1200, num_layers=8, kernel_size=31, dropout=0.15)
    return TrainConfig(preset="boss", model=model, steps=70000, lr=1e-3, warmup=5000, eval_every=2000)


@register_preset
def baseline() -> TrainConfig:
    """The homework's sample code: one TransformerEncoder layer, mean pooling, linear head, cross-entropy."""
    model = ModelConfig(kind="transformer-mean", d_model=80, num_heads=2, ffn_dim=256, num_layers=1, dropout=0.1)
    return TrainConfig(preset="baseline", model=model, lr=1e-3, warmup=1000)


def create_config(preset: str) -> TrainConfig:
    if preset not in PRESETS:
        raise VoxaugError(f"--preset {preset!r} is not known; accepted: {', '.join(PRESETS)}")
    return PRESETS[preset]()


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "config file not found" if not path.exists() else not_a_file(path, "config"))
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise file_error(path, f"malformed TOML ({exc})") from exc
    except (ValueError, RecursionError) as exc:  # a number of over 4300 digits; arrays nested thousands deep
        raise file_error(path, f"unreadable TOML ({str(exc).split(';')[0]})") from None


def load_config_file(path: str | Path) -> dict:
    """A --config file's settings: a TOML file, or a run's ``config.json`` (``*.json``), read back as its run's."""
    if not is_run_record(path):
        return load_toml(path)
    values = read_json(path, "run config")
    if not isinstance(values, dict):
        raise file_error(path, "expected a JSON object of settings (a run's config.json)")
    if not isinstance(values.get("run"), dict):  # else read as a run saved before today's settings existed
        raise file_error(path, "not a run's config.json (it has no \"run\" table, which every run records); "
                               "give hand-written settings as a TOML file")
    return run_record_settings(values)


def is_run_record(path: str | Path) -> bool:
    """A --config file that is a run's ``config.json`` (JSON), not a TOML file."""
    return Path(path).suffix.lower() == ".json"


def _folders_relative_to(config_path: str | Path | None) -> Path:
    """What a config file's relative noise and RIR folders are read against: a TOML file's own folder; for a run's
    ``config.json`` (saved before folders were recorded absolute) the working directory, as --resume reads it."""
    return Path(config_path).parent if config_path and not is_run_record(config_path) else Path.cwd()


def run_record_settings(record: dict) -> dict:
    """The settings a run's ``config.json`` records, as a config file gives them: without what the run derived
    (``run``, and the ``[model]`` sizes its data set), and with the values of settings it predates."""
    values = with_versioned_defaults({key: value for key, value in record.items() if key != "run"})
    if isinstance(values.get("model"), dict):
        values["model"] = {key: value for key, value in values["model"].items() if key not in DERIVED_MODEL_KEYS}
    return values


def _without_dropped_augmentations(record_augment: dict, names: list[str] | None) -> dict:
    """A run record's ``[augment]`` tables less those of augmentations that ``names`` (the command line's --augment)
    leaves out: they are the run's settings of what no longer runs, not settings the user wrote, so they go with it
    (a TOML file's are refused by :func:`_refuse_tables_of_unnamed`)."""
    if names is None:
        return record_augment
    kept = resolve_names({"names": names})
    return {key: value for key, value in record_augment.items() if key not in AUGMENTATIONS or key in kept}


def resolve_config(
    preset: str | None = None,
    toml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    augment_overrides: dict[str, Any] | None = None,
    frontend_overrides: dict[str, Any] | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Preset, then the TOML file's keys (``[model]``, ``[augment]``, ``[frontend]`` tables), then CLI values.

    ``preset`` is the command line's (None when not given): it beats the TOML's, and ``cpu`` is the default.
    ``base`` (a run's saved config, for --resume) replaces the preset's values, so that what the user gives
    lands on the run's own settings."""
    file_values = load_config_file(toml_path) if toml_path else {}
    for table in ("model", "augment", "frontend"):
        if not isinstance(file_values.get(table, {}), dict):
            raise file_error(toml_path, f"[{table}] must be a table, got {abridged(file_values[table])}")
    file_preset = file_values.get("preset")
    if file_preset is not None and (not isinstance(file_preset, str) or file_preset not in PRESETS):
        raise file_error(toml_path, f"preset {abridged(file_preset)} is not known; accepted: {', '.join(PRESETS)}")
    if preset in PRESETS and file_preset is not None and preset != file_preset and is_run_record(toml_path):
        raise VoxaugError(f"--preset {preset}: {toml_path} is the record of a {file_preset} run, which sets every value "
                          f"a preset gives, so the run would be named {preset} without being one; leave --preset out "
                          "and give what should change as options")
    if preset is None:  # an empty --preset is a name, refused below, not the option left out
        preset = file_preset or (base.preset if base else "cpu")
    base_values = base.to_dict() if base else create_config(preset).to_dict()
    base_tables = {table: base_values.pop(table) for table in ("model", "augment", "frontend")}
    file_tables = {table: file_values.pop(table, {}) for table in ("model", "augment", "frontend")}
    if toml_path and is_run_record(toml_path):
        file_tables["augment"] = _without_dropped_augmentations(file_tables["augment"],
                                                                (augment_overrides or {}).get("names"))
    try:
        absolute_folders(file_tables["augment"], _folders_relative_to(toml_path))
    except VoxaugError as exc:  # only a file's tables are expanded here: name it
        raise file_error(toml_path, str(exc)) from None
    model_values = {**base_tables["model"], **file_tables["model"], **(model_overrides or {})}
    augment_values = _merge_tables(base_tables["augment"], file_tables["augment"], augment_overrides or {})
    frontend_values = with_rate_implications(base_tables["frontend"], file_tables["frontend"], frontend_overrides or {})
    if toml_path:
        try:  # the file's own values, before the command line's land on them: an error here is the file's
            refuse_unknown_keys(file_values, TrainConfig, str(toml_path))
            derived = sorted(set(file_tables["model"]) & set(DERIVED_MODEL_KEYS))
            if derived:
                raise VoxaugError(f"[model] {', '.join(derived)}: set from the data, not by a config "
                                  "(the mel bins by [frontend] n_mels)")
            check_types(file_values, TrainConfig, str(toml_path))
            refuse_unknown_keys(file_tables["model"], ModelConfig, "model config", not_settable=DERIVED_MODEL_KEYS)
            check_types(file_tables["model"], ModelConfig, f"{toml_path} [model]")
        except VoxaugError as exc:
            if str(exc).startswith(str(toml_path)):
                raise
            raise file_error(toml_path, str(exc)) from exc
    merged = {**base_values, **file_values, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    merged["model"] = model_values
    merged["augment"] = augment_values
    merged["frontend"] = frontend_values
    merged["preset"] = preset
    config = TrainConfig.from_dict(merged)
    if toml_path:
        file_only = TrainConfig.from_dict({
            **base_values, **file_values, "preset": preset,
            "model": {**base_tables["model"], **file_tables["model"]},
            "augment": _merge_tables(base_tables["augment"], file_tables["augment"], {}),
            "frontend": with_rate_implications(base_tables["frontend"], file_tables["frontend"])})
        _name_the_file_in_errors(config, file_only, toml_path)
        _refuse_tables_of_unnamed(file_tables["augment"], resolve_names(config.augment), toml_path)
    return config


def _refuse_tables_of_unnamed(tables: dict, named: list[str], toml_path: str | Path) -> None:
    """A file's ``[augment.<name>]`` table for an augmentation that will not run would silently do nothing, as a
    strength option does, which the command line refuses alike."""
    unnamed = sorted(table for table in tables if table in AUGMENTATIONS and table not in named)
    if unnamed:
        table = unnamed[0]
        raise file_error(toml_path, f"[augment.{table}]: sets the '{table}' augmentation, which is not among those "
                                    f"named ({', '.join(named) or 'none'}); add {table} to [augment] names or "
                                    "--augment, or remove the table")


def absolute_folders(augment: dict, folder: Path) -> None:
    """Relative noise and RIR folders of an ``augment`` table made absolute against ``folder`` (a TOML file's own
    folder), ``~`` first expanded to the home folder as a shell would: the run records them, and a --resume with the
    same file from elsewhere must find the same folders."""
    for name, table in augment.items():
        if isinstance(table, dict):
            for key in ("noise_dir", "rir_dir"):
                if isinstance(table.get(key), str) and table[key].strip():  # check_folder refuses a blank one
                    expanded = home_expanded(table[key], f"[augment.{name}] {key}")
                    table[key] = str(resolved_without_loop(folder / expanded, f"[augment.{name}] {key}"))


def check_values(config: TrainConfig) -> None:
    """Every value of ``config`` and its augmentations' strengths, refused in one line."""
    config.validate()
    build_pipeline(resolve_names(config.augment), config.augment)


def _name_the_file_in_errors(config: TrainConfig, file_only: TrainConfig, toml_path: str | Path) -> None:
    """Check the final config; an error the file's values cause without the command line's is the file's, and
    names it (the values are judged together, so a file value the command line makes valid is accepted)."""
    try:
        check_values(config)
    except VoxaugError as exc:
        try:
            check_values(file_only)
        except VoxaugError as from_file:
            if str(from_file) == str(exc):
                raise file_error(toml_path, str(exc)) from exc
        raise


def with_rate_implications(*tables: dict) -> dict:
    """Front-end tables merged in order, plus what a sample rate given in them implies for the others
    (``FrontendConfig.implied_by_rate``): ``--sample-rate 48000`` alone gives a working front end."""
    merged = {key: value for table in tables for key, value in table.items()}
    given = {key for table in tables[1:] for key in table}
    return {**merged, **FrontendConfig.implied_by_rate(merged, given)}


def changed_settings(before: Any, after: Any, path: str = "") -> list[str]:
    """Dotted names of the settings that differ between two ``to_dict()`` configs (``lr``, ``model.d_model``,
    ``augment.wave.snr_p``); a table on one side only counts as empty on the other."""
    tables = [value for value in (before, after) if value is not None]
    if tables and all(isinstance(value, dict) for value in tables):
        before, after = before or {}, after or {}
        return [name for key in sorted(set(before) | set(after))
                for name in changed_settings(before.get(key), after.get(key), f"{path}{key}.")]
    return [] if before == after else [path.rstrip(".")]
