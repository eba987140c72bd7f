"""The `voxaug` command line. `python -m voxaug` runs the same app."""

from __future__ import annotations

import typer

from voxaug.cli import embed, enroll, evaluate, export, identify, plot, predict, synth, train
from voxaug.cli.common import SHARED_WORK_COMMANDS, OneLineUsageErrors, leave_to_rank_0, note_command_line, set_debug

app = typer.Typer(
    cls=OneLineUsageErrors,
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Speaker identification: synthesise data, train with augmentation, predict, embed and identify.",
)


def print_version(asked: bool) -> None:
    """``voxaug --version``: the installed version, for bug reports and for pinning."""
    if asked:
        from voxaug import __version__

        typer.echo(f"voxaug {__version__}")
        raise typer.Exit()


@app.callback()
def root(context: typer.Context,
         debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors "
                                                          "(or set VOXAUG_DEBUG=1)."),
         version: bool = typer.Option(False, "--version", callback=print_version, is_eager=True,
                                      help="Print the installed version and exit.")) -> None:
    set_debug(debug)
    note_command_line(context.command_path, context.invoked_subcommand)
    command = context.invoked_subcommand
    if command and command not in SHARED_WORK_COMMANDS and leave_to_rank_0(command):
        raise typer.Exit()


app.command("synth")(synth.synth)
app.command("train")(train.train)
app.command("predict")(predict.predict)
app.command("plot")(plot.plot)
app.command("embed")(embed.embed)
app.command("enroll", cls=enroll.EnrollCommand)(enroll.enroll)
app.command("identify")(identify.identify)
app.command("evaluate")(evaluate.evaluate)
app.command("export")(export.export)


def main() -> None:
    app()
