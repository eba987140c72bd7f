"""`import voxaug`, the CLI's start-up and every `--help` load no torch, FAISS, scikit-learn or matplotlib."""

from __future__ import annotations

import subprocess
import sys

import pytest

from voxaug.cli import train as train_cli

HEAVY = ("torch", "torchaudio", "faiss", "sklearn", "matplotlib", "audiomentations")
COMMANDS = ("synth", "train", "predict", "plot", "embed", "enroll", "identify", "evaluate", "export")


def heavy_modules_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.parametrize("code", ["import voxaug", "import voxaug.cli.main"])
def test_import_loads_no_heavy_module(code):
    assert heavy_modules_after(code) == []


def test_every_help_loads_no_heavy_module():
    code = ("from typer.testing import CliRunner\nfrom voxaug.cli.main import app\n"
            f"for command in {COMMANDS!r} + ('',):\n"
            "    result = CliRunner().invoke(app, [command, '--help'] if command else ['--help'])\n"
            "    assert result.exit_code == 0 and 'Usage' in result.output, (command, result.output)")
    assert heavy_modules_after(code) == []


def test_api_names_load_on_first_use():
    assert heavy_modules_after("import voxaug\nvoxaug.SpeakerModel\nvoxaug.SpeakerIndex") == []
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import voxaug

        voxaug.Nope  # noqa: B018


def test_train_help_names_equal_the_registries():
    from voxaug.augment import AUGMENTATIONS
    from voxaug.augment.pipeline import DEFAULT_AUGMENT
    from voxaug.config import PRESETS

    assert train_cli.PRESET_NAMES == tuple(PRESETS)
    assert train_cli.AUGMENTATION_NAMES == tuple(sorted(AUGMENTATIONS))
    assert train_cli.AUGMENTATION_ORDER == tuple(sorted(AUGMENTATIONS, key=lambda name: AUGMENTATIONS[name].order))
    assert train_cli.DEFAULT_AUGMENT_NAMES == DEFAULT_AUGMENT


def test_a_ctrl_c_while_the_cli_imports_ends_as_one_line_with_status_130():
    """The console script imported the whole CLI before any command's error handling was in force, so Ctrl-C in its
    first second or so printed a traceback through the imports; it now ends as a running command's Ctrl-C does."""
    from importlib.metadata import entry_points

    assert [script.value for script in entry_points(group="console_scripts", name="voxaug")] == ["voxaug.__main__:main"]
    code = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def interrupted(name, *args, **kwargs):\n"
            "    if name == 'voxaug.cli.main':\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *args, **kwargs)\n"
            "builtins.__import__ = interrupted\n"
            "from voxaug.__main__ import main\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr, result.stdout) == (130, "error: interrupted\n", "")
