"""`voxaug synth OUT`: write the synthetic multi-speaker corpus."""

from __future__ import annotations

from pathlib import Path

import typer

from voxaug.cli.common import QuietOption, clean_errors, folder_name, output_folder
from voxaug.errors import counted
from voxaug.synth_config import SynthConfig


@clean_errors
def synth(
    out: Path = typer.Argument(..., parser=folder_name,
                               help="Output folder (HW4 layout plus unseen/{enroll,test,impostors}/<speaker>/)."),
    speakers: int = typer.Option(SynthConfig.speakers, help="Training speakers."),
    utterances: int = typer.Option(SynthConfig.utterances, help="Utterances per training speaker (a tenth, at least one, go to testdata.json)."),
    unseen: int = typer.Option(SynthConfig.unseen, help="Speakers kept out of training, for enrolment."),
    impostors: int = typer.Option(SynthConfig.impostors, help="Speakers never trained on nor enrolled (open-set checks)."),
    seed: int = typer.Option(SynthConfig.seed, help="Same seed (and torch thread count), same files."),
    wav: bool = typer.Option(False, "--wav", help="Also write training audio as OUT/wav/<speaker>/<session>/<n>.wav."),
    quiet: bool = QuietOption,
) -> None:
    """Generate a synthetic speaker set locally (seconds, deterministic for a seed)."""
    from voxaug.synth import generate

    output_folder(out, "OUT")
    config = SynthConfig(speakers=speakers, utterances=utterances, unseen=unseen, impostors=impostors, seed=seed,
                         write_training_audio=wav)
    summary = generate(out, config, progress=not quiet)
    typer.echo(
        f"wrote {summary['train_utterances']} training and {summary['test_utterances']} test utterances of "
        f"{summary['speakers']} speakers, plus {counted(summary['unseen_speakers'], 'unseen speaker')} and "
        f"{counted(summary['impostors'], 'impostor')}, to {out}"
    )
