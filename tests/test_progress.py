"""Progress on a stderr that is no terminal: whole lines, at most every LINE_INTERVAL_S and once at the end."""

from __future__ import annotations

import io
import sys

import voxaug.progress as progress
from voxaug.progress import print_warning, progress_bar


def test_a_bar_on_a_log_file_writes_a_line_per_interval_and_one_when_closed(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)  # every update is due for a line
    with progress_bar(enabled=True, total=3, initial=1, desc="train", unit="step") as bar:
        bar.update(1)
        bar.set_postfix(train_acc="0.500", refresh=False)
        bar.update(1)
    assert capsys.readouterr().err == "train: 2/3 step\ntrain: 3/3 step, train_acc=0.500\n"  # not twice when closed


def test_an_iterated_bar_counts_its_items_and_says_so_once(capsys):
    assert list(progress_bar(["a", "b"], enabled=True, desc="enrol x.faiss", unit="speaker", leave=False)) == ["a", "b"]
    assert capsys.readouterr().err == "enrol x.faiss: 2/2 speaker\n"


def test_a_notebook_keeps_tqdm_s_live_bar(monkeypatch):
    notebook_stream = type("OutStream", (io.StringIO,), {"__module__": "ipykernel.iostream"})()
    monkeypatch.setattr(sys, "stderr", notebook_stream)  # no tty, yet the notebook redraws a bar in place
    with progress_bar(enabled=True, total=2, desc="train", unit="step") as bar:
        assert type(bar).__module__.startswith("tqdm")
        bar.update(2)
    assert "\r" in notebook_stream.getvalue()


def test_a_stderr_without_isatty_gets_whole_lines_not_an_attribute_error(monkeypatch):
    """A writer put in stderr's place (the common one that sends it to a logger: ``write`` and ``flush``) has no
    ``isatty``: tqdm drew on it, while the check for a terminal raised AttributeError, which stopped a Trainer's fit."""
    class ToLogger:
        def __init__(self) -> None:
            self.written: list[str] = []

        def write(self, text: str) -> None:
            self.written.append(text)

        def flush(self) -> None:
            pass

    logger = ToLogger()
    monkeypatch.setattr(sys, "stderr", logger)
    with progress_bar(enabled=True, total=2, desc="train", unit="step") as bar:
        bar.update(2)
    assert "".join(logger.written) == "train: 2/2 step\n"


def test_a_closed_stderr_drops_the_lines_as_tqdm_drops_its_bar(monkeypatch):
    """The check for a terminal took a closed stderr for a log file, whose first line then raised "I/O operation on
    closed file" out of the bar (tqdm stops drawing on it instead)."""
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    with progress_bar(enabled=True, total=2, desc="train", unit="step") as bar:
        bar.update(2)
    assert bar.count == 2


def test_a_warning_during_a_live_bar_is_printed_above_it_and_one_without_a_terminal_is_a_plain_line(monkeypatch,
                                                                                                    capsys):
    terminal = type("OutStream", (io.StringIO,), {"__module__": "ipykernel.iostream"})()
    monkeypatch.setattr(sys, "stderr", terminal)  # a stream tqdm draws a live bar on
    with progress_bar(enabled=True, total=2, desc="featurising", unit="utt") as bar:
        bar.update(1)
        print_warning("warning: skipped x.wav", bar)
    assert "\rwarning: skipped x.wav\n" in terminal.getvalue()  # the bar cleared first, then drawn again below
    monkeypatch.undo()
    with progress_bar(enabled=True, total=2, desc="featurising", unit="utt") as bar:
        print_warning("warning: skipped y.wav", bar)
    assert capsys.readouterr().err.startswith("warning: skipped y.wav\n")
