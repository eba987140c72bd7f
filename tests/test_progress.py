"""Progress on a stderr that is no terminal: whole lines, at most every LINE_INTERVAL_S and once at the end."""

from __future__ import annotations

import io
import sys

import voxaug.progress as progress
from voxaug.progress import progress_bar


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
