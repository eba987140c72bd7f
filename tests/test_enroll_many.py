"""`enroll --speakers-dir`: every speaker folder in one call, one write, refusal before anything is written;
the identify table's summary line; shell completion."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

import voxaug.cli.embed
from voxaug.api.index import SpeakerIndex
from voxaug.cli.main import app
from voxaug.embeddings.index import sidecar_path
from voxaug.errors import VoxaugError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def index_bytes(index):
    return index.read_bytes(), index.with_name(index.name + ".json").read_bytes()


def test_speakers_dir_enrols_every_folder_in_one_call(trained_run, tiny_synth, tmp_path):
    index = tmp_path / "spk.faiss"
    folder = tiny_synth / "unseen" / "enroll"
    speakers = sorted(p.name for p in folder.iterdir() if p.is_dir())
    clips = sum(len(list((folder / s).glob("*.pt"))) for s in speakers)
    done = invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speakers-dir", folder)
    assert done.exit_code == 0, done.output
    assert f"enrolled {len(speakers)} speakers from {clips} clips; {len(speakers)} speakers in {index}" in done.output
    listed = invoke("identify", "--index", index, "--json", tiny_synth / "unseen" / "test")
    assert listed.exit_code == 0, listed.output


def test_an_enrolled_speaker_is_refused_without_append_and_nothing_is_written(trained_run, tiny_synth, tmp_path):
    index = tmp_path / "spk.faiss"
    folder = tmp_path / "people"
    source = tiny_synth / "unseen" / "enroll"
    first, second = sorted(p.name for p in source.iterdir() if p.is_dir())[:2]
    shutil.copytree(source / first, folder / first)
    assert invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speakers-dir", folder).exit_code == 0
    before = index_bytes(index)
    shutil.copytree(source / second, folder / second)  # one new speaker beside one already enrolled

    refused = invoke("enroll", "--index", index, "--speakers-dir", folder)
    assert refused.exit_code != 0
    assert len(refused.output.strip().splitlines()) == 1 and f"already enrolled: {first}" in refused.output
    assert index_bytes(index) == before

    appended = invoke("enroll", "--index", index, "--speakers-dir", folder, "--append")
    assert appended.exit_code == 0, appended.output
    clips = {name: len(list((folder / name).glob("*.pt"))) for name in (first, second)}
    assert f"enrolled 1 speaker from {clips[second]} clips, skipping {clips[first]} clips already enrolled; " \
           f"2 speakers in {index} (1 new: {second})" in appended.output and index_bytes(index) != before
    assert json.loads(sidecar_path(index).read_text())["counts"] == clips, "the first speaker's clips count once"
    after = index_bytes(index)
    again = invoke("enroll", "--index", index, "--speakers-dir", folder, "--append")
    assert again.exit_code == 0 and f"enrolled 0 speakers from 0 clips, skipping {sum(clips.values())} clips" \
        in again.output and index_bytes(index) == after, "nothing new: nothing written"
    assert "new:" not in again.output, "every folder was enrolled already"


def test_speakers_dir_refuses_bad_folders_in_one_line(trained_run, tiny_synth, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    stray = tmp_path / "stray"
    shutil.copytree(tiny_synth / "unseen" / "enroll", stray)
    (stray / "loose.wav").write_bytes(b"")
    ckpt = trained_run / "best.pt"
    for args, problem in [(("--speakers-dir", empty), "no <speaker>/ folders"),
                          (("--speakers-dir", stray), "holds files"),
                          (("--speakers-dir", empty, "--speaker", "x"), "give one of"),
                          (("--speakers-dir", empty, tmp_path / "clip.pt"), "give no clip arguments")]:
        done = invoke("enroll", "--index", tmp_path / "spk.faiss", "--ckpt", ckpt, *args)
        assert done.exit_code != 0 and problem in done.output and len(done.output.strip().splitlines()) == 1
    assert not (tmp_path / "spk.faiss").exists()


def test_speakers_dir_leaves_a_corpus_files_that_are_no_clips_alone(trained_run, tiny_synth, tmp_path):
    """VCTK 0.92's wav48_silence_trimmed/ holds log.txt beside its speaker folders; Windows leaves Thumbs.db: neither
    is a clip of no speaker, as training on the same folder agrees."""
    corpus = tmp_path / "wav48_silence_trimmed"
    shutil.copytree(tiny_synth / "unseen" / "enroll", corpus)
    for name in ("log.txt", "Thumbs.db", "README.TXT"):
        (corpus / name).write_text("not audio\n")
    speakers = sorted(p.name for p in corpus.iterdir() if p.is_dir())
    index = tmp_path / "spk.faiss"
    done = invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speakers-dir", corpus)
    assert done.exit_code == 0, done.output
    assert sorted(json.loads(sidecar_path(index).read_text())["counts"]) == speakers


def test_speakers_dir_above_the_speakers_folders_warns_as_a_dataset_does(trained_run, tiny_synth, tmp_path):
    """`enroll --speakers-dir LibriSpeech/` enrolled its subsets as speakers (LibriSpeech/<subset>/<speaker>/<chapter>/)
    without a word, where train and evaluate given that folder warn and name the folder to give instead."""
    corpus = tmp_path / "LibriSpeech"
    for subset, speaker in (("train-clean-100", "new000"), ("dev-clean", "new001")):
        shutil.copytree(tiny_synth / "unseen" / "enroll" / speaker, corpus / subset / speaker / "121")
    first = sorted(p.name for p in (corpus / "dev-clean" / "new001" / "121").iterdir())[0]
    done = invoke("enroll", "--index", tmp_path / "spk.faiss", "--ckpt", trained_run / "best.pt", "--speakers-dir",
                  corpus, "-q")
    assert done.exit_code == 0, done.output
    assert done.stderr == (
        f"warning: {corpus}: 2 of the 2 speakers hold every clip three or more folders down (first 'dev-clean': "
        f"dev-clean/new001/121/{first}); a speaker is --speakers-dir's first folder level, so if the folders below "
        f"them are the speakers, give {corpus / 'dev-clean'} as --speakers-dir\n")
    shallow = invoke("enroll", "--index", tmp_path / "other.faiss", "--ckpt", trained_run / "best.pt",
                     "--speakers-dir", corpus / "dev-clean", "-q")
    assert shallow.exit_code == 0 and shallow.stderr == "", shallow.output


def test_identify_ends_with_a_summary_line(trained_run, tiny_synth, tmp_path):
    index = tmp_path / "spk.faiss"
    ckpt = trained_run / "best.pt"
    assert invoke("enroll", "--index", index, "--ckpt", ckpt, "--speakers-dir", tiny_synth / "unseen" / "enroll").exit_code == 0
    clips = sorted((tiny_synth / "unseen" / "test").glob("*/*.pt"))
    done = invoke("identify", "--index", index, "--threshold", "1.0", *clips)  # no two clips reach cosine 1: all unknown
    assert done.exit_code == 0, done.output
    assert done.output.strip().splitlines()[-1] == f"{len(clips)} clips: 0 identified, {len(clips)} unknown"
    done = invoke("identify", "--index", index, "--threshold", "-1.0", clips[0])
    assert done.output.strip().splitlines()[-1] == "1 clip: 1 identified, 0 unknown"
    as_json = invoke("identify", "--index", index, "--json", *clips)
    assert len(as_json.output.strip().splitlines()) == len(clips)


def test_embed_s_hint_for_other_speakers_enrols_them_as_written(trained_run, tiny_synth, tmp_path):
    """embed --index on speakers the run never trained on is refused, naming the enroll command that indexes them;
    that command, as written, failed: the refusal leaves no index, and enroll creates one only with --ckpt."""
    index, folder = tmp_path / "new.faiss", tiny_synth / "unseen" / "enroll"
    refused = invoke("embed", "--ckpt", trained_run / "last.pt", folder, "--out", tmp_path / "emb", "--index", index,
                     "--device", "cpu", "-q")
    assert refused.exit_code == 2 and not index.exists(), refused.output
    hint = re.search(r"`voxaug (enroll [^`]*)`", refused.output)
    assert hint, refused.output
    done = invoke(*shlex.split(hint.group(1).replace("DIR", shlex.quote(str(folder)))), "--device", "cpu", "-q")
    speakers = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert done.exit_code == 0, done.output
    assert f"; {len(speakers)} speakers in {index}" in done.output


def test_help_offers_shell_completion():
    done = invoke("--help")
    assert done.exit_code == 0 and "--install-completion" in done.output


def test_shell_completion_asked_under_python_m_is_for_the_voxaug_script(tmp_path):
    """`python -m voxaug --install-completion` wrote `~/.bash_completions/python -m voxaug.sh`, which registered
    completion for `python` and `-m` and ran `env _PYTHON _M VOXAUG_COMPLETE=complete_bash`, an error at every
    Tab; the script it writes must be the one `voxaug --install-completion` writes."""
    import sys

    def completion(*command, option):
        environment = {**os.environ, "HOME": str(tmp_path), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
        done = subprocess.run([*command, option, "bash"], env=environment, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    script = shutil.which("voxaug", path=os.path.dirname(sys.executable)) or "voxaug"
    shown = completion(sys.executable, "-m", "voxaug", option="--show-completion")
    assert shown == completion(script, option="--show-completion")
    assert "complete -o default -F _voxaug_completion voxaug\n" in shown and "_VOXAUG_COMPLETE=complete_bash" in shown
    completion(sys.executable, "-m", "voxaug", option="--install-completion")
    assert [p.name for p in (tmp_path / ".bash_completions").iterdir()] == ["voxaug.sh"]
    assert (tmp_path / ".bash_completions" / "voxaug.sh").read_text().strip() == shown.strip()


def test_a_blank_name_or_the_word_unknown_is_refused_as_a_speaker_and_nothing_is_written(trained_run, tiny_synth,
                                                                                         tmp_path):
    index = tmp_path / "spk.faiss"
    clips = tiny_synth / "unseen" / "enroll" / sorted(p.name for p in (tiny_synth / "unseen" / "enroll").iterdir())[0]
    assert invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speaker", "first", clips).exit_code == 0
    before = index_bytes(index)
    for name, needle in (("unknown", "is what identify answers"), ("", "must be non-empty"), (" x", "must be non-empty")):
        refused = invoke("enroll", "--index", index, "--speaker", name, clips)
        assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, refused.output
        assert needle in refused.output and index_bytes(index) == before
    people = tmp_path / "people"
    shutil.copytree(clips, people / "unknown")
    refused = invoke("enroll", "--index", index, "--speakers-dir", people)
    assert refused.exit_code == 2 and "is what identify answers" in refused.output and index_bytes(index) == before


def test_quiet_enrolment_draws_no_progress_bar(trained_run, tiny_synth, tmp_path):
    folder = tiny_synth / "unseen" / "enroll"
    loud = invoke("enroll", "--index", tmp_path / "a.faiss", "--ckpt", trained_run / "best.pt", "--speakers-dir", folder)
    quiet = invoke("enroll", "--index", tmp_path / "b.faiss", "--ckpt", trained_run / "best.pt", "--speakers-dir", folder,
                   "--quiet")
    assert loud.exit_code == 0 and quiet.exit_code == 0, quiet.output
    assert "enrol a.faiss" in loud.output and "enrol b.faiss" not in quiet.output
    assert quiet.output.strip().splitlines()[-1].startswith("enrolled ")


def test_control_characters_are_refused_in_a_name_and_a_bad_folder_name_is_named(trained_run, tiny_synth, tmp_path):
    index = tmp_path / "spk.faiss"
    clips = sorted((tiny_synth / "unseen" / "enroll").iterdir())[0]
    refused = invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speaker", "ann\nbob", clips)
    assert refused.exit_code == 2 and "holds a control character" in refused.output and not index.exists()
    people = tmp_path / "people"
    shutil.copytree(clips, people / " lead")
    refused = invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speakers-dir", people)
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, refused.output
    assert refused.output.startswith(f"error: {people / ' lead'}: speaker name ' lead' must be") and not index.exists()


def test_append_for_a_speaker_who_is_not_enrolled_enrols_them_and_warns(trained_run, tiny_synth, tmp_path):
    index = tmp_path / "spk.faiss"
    first, second = sorted((tiny_synth / "unseen" / "enroll").iterdir())[:2]
    assert invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speaker", "ann", first).exit_code == 0
    more = invoke("enroll", "--index", index, "--speaker", "ann", "--append", second)
    assert more.exit_code == 0 and more.stderr == "", more.output
    other = sorted((tiny_synth / "unseen" / "test").iterdir())[0]
    typo = invoke("enroll", "--index", index, "--speaker", "anm", "--append", other)
    assert typo.exit_code == 0 and "warning: anm was not enrolled, so --append enrolled it" in typo.stderr
    assert sorted(json.loads(sidecar_path(index).read_text())["counts"]) == ["anm", "ann"]


def test_enrolling_through_a_link_to_the_index_keeps_what_others_enrolled_meanwhile(trained_run, tiny_synth, tmp_path):
    """Through a symbolic link the sidecar is the one beside the file it points to, so an enrolment reread under
    the lock sees what another process wrote since this object was opened."""
    index, link = tmp_path / "spk.faiss", tmp_path / "link.faiss"
    first, second = sorted((tiny_synth / "unseen" / "enroll").iterdir())[:2]
    third = sorted((tiny_synth / "unseen" / "test").iterdir())[0]  # other clips, enrolled as a third name
    assert invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speaker", "ann", first).exit_code == 0
    link.symlink_to(index)
    opened = SpeakerIndex.open(link)
    assert invoke("enroll", "--index", index, "--speaker", "bob", second).exit_code == 0
    opened.enroll("cat", sorted(third.glob("*.pt")))
    assert sorted(json.loads(sidecar_path(index).read_text())["counts"]) == ["ann", "bob", "cat"]
    assert link.is_symlink() and not (tmp_path / "link.faiss.json").exists()


def test_embed_refuses_an_index_that_appeared_while_it_embedded(trained_run, tiny_synth, tmp_path, monkeypatch):
    index = tmp_path / "spk.faiss"
    building = voxaug.cli.embed.build_speaker_index

    def enrolled_meanwhile(*args, **kwargs):  # an `enroll` creates the index while embed is working
        clips = sorted((tiny_synth / "unseen" / "enroll").iterdir())[0]
        assert invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speaker", "ann", clips).exit_code == 0
        return building(*args, **kwargs)

    monkeypatch.setattr(voxaug.cli.embed, "build_speaker_index", enrolled_meanwhile)
    before = index_bytes(index) if index.exists() else None
    refused = invoke("embed", tiny_synth, "--ckpt", trained_run / "best.pt", "--out", tmp_path / "emb", "--index", index,
                     "--backend", "center", "-q")
    assert before is None and refused.exit_code == 2, refused.output
    assert "an index is already there" in refused.output and "(nothing was written)" in refused.output
    assert json.loads(sidecar_path(index).read_text())["labels"] == ["ann"]
    assert not (tmp_path / "emb" / "embeddings.npy").exists() and not (tmp_path / "emb" / "items.csv").exists()


def test_a_speaker_enrolled_before_names_were_checked_for_control_characters_can_still_take_clips(trained_run,
                                                                                                   tiny_synth, tmp_path):
    index = tmp_path / "spk.faiss"
    first, second = sorted((tiny_synth / "unseen" / "enroll").iterdir())[:2]
    assert invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speaker", "ann", first).exit_code == 0
    side = json.loads(sidecar_path(index).read_text())  # as an older voxaug wrote a name holding a tab
    renamed = "a\tnn"
    side["labels"] = [renamed if label == "ann" else label for label in side["labels"]]
    for field in ("counts", "mean_norms", "clip_digests", "cohort_stats"):
        if isinstance(side.get(field), dict) and "ann" in side[field]:
            side[field][renamed] = side[field].pop("ann")
    sidecar_path(index).write_text(json.dumps(side))
    assert SpeakerIndex.open(index).enroll(renamed, sorted(second.glob("*.pt")), append=True) > 1
    with pytest.raises(VoxaugError, match="holds a control character"):
        SpeakerIndex.open(index).enroll("b\tob", sorted(second.glob("*.pt")))


def test_a_clip_already_another_speakers_is_refused_and_nothing_is_written(trained_run, tiny_synth, tmp_path):
    """The same content under two names is a labelling mistake: both speakers' means would hold it, and a query
    from that recording would be answered as either. Checked against the index, within one call, and again under
    the lock (another process may have enrolled the clip since this object read the index)."""
    index = tmp_path / "spk.faiss"
    first, second = sorted((tiny_synth / "unseen" / "enroll").iterdir())[:2]
    clip = sorted(first.glob("*.pt"))[0]
    assert invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speaker", "ann", first).exit_code == 0
    before = index_bytes(index)
    copy = tmp_path / "renamed.pt"
    shutil.copyfile(clip, copy)
    again = invoke("enroll", "--index", index, "--speaker", "bob", second, copy)
    assert again.exit_code == 2
    assert f"bob: clip {copy} has the same content as one ann is enrolled from" in again.stderr, again.output
    assert index_bytes(index) == before
    folders = tmp_path / "speakers"
    shutil.copytree(second, folders / "cat")
    shutil.copytree(second, folders / "dan")
    both = invoke("enroll", "--index", index, "--speakers-dir", folders)
    assert both.exit_code == 2 and "(cat) and" in both.stderr and "(dan) have the same content" in both.stderr, both.output
    assert index_bytes(index) == before
    stale, clips = SpeakerIndex.open(index), sorted(second.glob("*.pt"))
    assert SpeakerIndex.open(index).enroll("eve", clips) == len(clips)
    with pytest.raises(VoxaugError, match=r"fay: clip .* has the same content as one eve is enrolled from"):
        stale.enroll("fay", clips)
    assert sorted(json.loads(sidecar_path(index).read_text())["counts"]) == ["ann", "eve"]


def test_a_name_in_another_unicode_spelling_is_the_same_speaker(trained_run, tiny_synth, tmp_path):
    """é as one code point (typed) and as e plus a combining accent (a macOS folder name) look alike: they enrolled
    two speakers that identify listed as the same name twice, and --remove of one spelling missed the other."""
    from voxaug.embeddings.index import SpeakerIndex as IndexData

    index = tmp_path / "spk.faiss"
    first, second = sorted(p for p in (tiny_synth / "unseen" / "enroll").iterdir() if p.is_dir())[:2]
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    done = invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speaker", decomposed,
                  *sorted(first.glob("*.pt")))
    assert done.exit_code == 0, done.output
    clips = sorted(second.glob("*.pt"))
    appended = invoke("enroll", "--index", index, "--speaker", composed, "--append", *clips[:1])
    assert appended.exit_code == 0 and "warning" not in appended.output, appended.output
    (tmp_path / "people" / composed).mkdir(parents=True)
    for clip in clips[1:]:
        shutil.copy(clip, tmp_path / "people" / composed)
    folder = invoke("enroll", "--index", index, "--speakers-dir", tmp_path / "people", "--append")
    assert folder.exit_code == 0 and "new:" not in folder.output, folder.output
    counts = IndexData.load(index).counts
    assert counts == {decomposed: len(list(first.glob("*.pt"))) + len(clips)}  # as first enrolled
    removed = invoke("enroll", "--index", index, "--remove", composed)
    assert removed.exit_code == 0 and "0 speakers remain" in removed.output, removed.output
    older = IndexData(dim=2)
    older.add(decomposed, np.eye(2)[:1])  # as an index written before names were stored in NFC holds it
    assert older.spellings([composed, "bob"]) == {composed: decomposed, "bob": "bob"}


def test_a_speaker_folder_in_decomposed_unicode_keeps_its_spelling_so_evaluate_matches_its_test_folder(
        trained_run, tiny_synth, tmp_path):
    """Names not yet enrolled were stored in NFC: `enroll --speakers-dir` of macOS's decomposed folder names made
    evaluate refuse the same-named --test folders as 'not enrolled in this index', and identify answer a name that
    is not the folder's. Two spellings of one new name in one call are still one speaker, refused."""
    from voxaug.api.index import SpeakerIndex as ApiIndex
    from voxaug.cli.evaluate import check_speaker_folders
    from voxaug.embeddings.index import SpeakerIndex as IndexData

    names = {}
    for part in ("enroll", "test"):
        for number, speaker in enumerate(sorted(p for p in (tiny_synth / "unseen" / part).iterdir() if p.is_dir())):
            names[number] = "cafe\u0301" + str(number)  # what macOS writes for a folder typed as café0
            shutil.copytree(speaker, tmp_path / part / names[number])
    index = tmp_path / "spk.faiss"
    done = invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speakers-dir", tmp_path / "enroll")
    assert done.exit_code == 0, done.output
    loaded = IndexData.load(index)
    assert loaded.speakers == sorted(names.values())
    check_speaker_folders(loaded, index, tmp_path / "enroll", tmp_path / "test", None)  # raised: not enrolled
    clip = sorted((tmp_path / "test" / names[0]).glob("*.pt"))[0]
    answer = json.loads(invoke("identify", "--index", index, "--json", "--top-k", "2", clip).output)
    assert {row["speaker"] for row in answer["top"]} <= set(names.values())
    api = ApiIndex.open(index, trained_run / "best.pt")
    clips = sorted(sorted((tiny_synth / "unseen" / "enroll").iterdir())[0].glob("*.pt"))
    with pytest.raises(VoxaugError, match="one name in different Unicode spellings"):
        api.enroll_many({"ren\u00e9": clips[:1], "rene\u0301": clips[1:2]})


def test_a_non_ascii_speaker_name_is_the_same_speaker_under_an_ascii_locale(trained_run, tiny_synth, tmp_path):
    """Under ``LC_ALL=C`` with ``PYTHONUTF8=0`` (else Python turns UTF-8 mode on) the folder or word ``José`` is
    ``Jos\\udcc3\\udca9``: train and embed named a class so, enroll a speaker so, and the model and index kept
    that name, so evaluate under a UTF-8 locale refused the same folders as other speakers, identify answered
    the escaped name, and ``enroll --speaker José --append`` enrolled the speaker a second time."""
    import os
    import subprocess
    import sys

    from voxaug.data.sources import ClipFolderSource
    from voxaug.embeddings.index import SpeakerIndex as IndexData

    ascii_locale = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    name = "José 中文"
    first, second = sorted(p for p in (tiny_synth / "unseen" / "enroll").iterdir() if p.is_dir())[:2]
    shutil.copytree(first, tmp_path / "people" / name / "video")
    shutil.copytree(second, tmp_path / "people" / "Zoë" / "video")
    script = ("import sys; from voxaug.data.sources import ClipFolderSource; "
              "print(ascii(ClipFolderSource(sys.argv[1]).speakers))")
    listed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "people")], capture_output=True,
                            text=True, timeout=120, env=ascii_locale)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == ascii(ClipFolderSource(tmp_path / "people").speakers) == ascii([name, "Zoë"])
    index = tmp_path / "spk.faiss"
    command = [sys.executable, "-m", "voxaug", "enroll", "--index", index, "--ckpt", trained_run / "best.pt",
               "--speakers-dir", tmp_path / "people", "--device", "cpu", "-q"]
    enrolled = subprocess.run([str(a) for a in command], capture_output=True, text=True, timeout=120, env=ascii_locale)
    assert enrolled.returncode == 0, enrolled.stderr
    clip = tiny_synth / "unseen" / "test" / first.name
    typed = os.fsencode(name).decode("ascii", "surrogateescape")  # the --speaker word as the C locale decodes it
    appended = invoke("enroll", "--index", index, "--speaker", typed, "--append", sorted(clip.glob("*.pt"))[0])
    assert appended.exit_code == 0 and "warning" not in appended.output, appended.output
    assert sorted(IndexData.load(index).counts) == [name, "Zoë"]


def test_the_append_warning_shows_an_odd_name_as_the_enrolled_line_does(trained_run, tiny_synth, tmp_path):
    """A name holding a file name's undecodable byte (a surrogate) was quoted in the `enrolled` line, through
    ``shown``, but printed bare in the --append warning below it: ``enrolled 'b\\udcffb' …`` then
    ``warning: b\\udcffb was not enrolled``."""
    index = tmp_path / "spk.faiss"
    first, second = sorted((tiny_synth / "unseen" / "enroll").iterdir())[:2]
    assert invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speaker", "ann", first).exit_code == 0
    odd = invoke("enroll", "--index", index, "--speaker", "b\udcffb", "--append", second)
    assert odd.exit_code == 0, odd.output
    assert odd.stdout.startswith("enrolled 'b\\udcffb' from 3 clips"), odd.stdout
    assert odd.stderr.startswith("warning: 'b\\udcffb' was not enrolled, so --append enrolled it"), odd.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash reads the $'...' word back")
def test_the_append_warning_s_remove_hint_types_back_as_the_speaker_it_enrolled(trained_run, tiny_synth, tmp_path):
    """The hint was ``--remove 'Jos\\xe9\\udcff'`` (``repr``) for a name given in bytes that are not all UTF-8:
    typed into a shell, ``\\udcff`` is six characters, another name, and --remove answered "not enrolled". It is
    now bash's ``$'Jos\\xc3\\xa9\\xff'``, which gives back the bytes the name was given in."""
    index = tmp_path / "spk.faiss"
    clip = sorted((tiny_synth / "unseen" / "enroll").iterdir())[0]
    odd = invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speaker", "José\udcff", "--append",
                 clip)
    assert odd.exit_code == 0, odd.output
    hint = odd.stderr.strip().rsplit("--remove ", 1)[1].removesuffix(")")
    assert hint == "$'Jos\\xc3\\xa9\\xff'", odd.stderr
    typed = subprocess.run(["bash", "-c", f"printf %s {hint}"], capture_output=True, check=True).stdout
    removed = invoke("enroll", "--index", index, "--remove", os.fsdecode(typed))
    assert removed.exit_code == 0 and removed.stdout.startswith("removed 'José\\udcff'; 0 speakers remain"), \
        removed.output


@pytest.mark.parametrize("option, value", [("--remove", "--help"), ("--remove", "--index"), ("--speaker", "--append")])
def test_a_speaker_name_that_is_an_option_of_enroll_is_refused_with_a_hint(tmp_path, option, value):
    """Click takes the word after ``--remove`` as its value whatever it is: ``enroll --remove --help`` looked for a
    speaker named ``--help`` ("not enrolled") instead of showing help, and ``--speaker --append CLIP`` would have
    enrolled one named ``--append``. A name that only starts with ``-`` is still looked for."""
    index = tmp_path / "spk.faiss"
    clips = [tmp_path / "clip.wav"] if option == "--speaker" else []
    done = invoke("enroll", "--index", index, option, value, *clips)
    assert done.exit_code == 2 and done.output.strip() == (
        f"error: {option} {value}: {value} is an option of enroll, not a speaker name; give the name right after "
        f"{option} (for help: voxaug enroll --help); for a speaker of that name, attach it: {option}={value}"), \
        done.output
    dashed = invoke("enroll", "--index", index, "--remove", "-x")
    assert dashed.exit_code == 2 and dashed.output.strip() == f"error: {index}: speaker index not found; nothing to remove"


def test_a_speaker_enrolled_from_a_folder_named_like_an_option_can_be_removed_as_the_refusal_says(
        trained_run, tiny_synth, tmp_path):
    """A --speakers-dir folder named ``--index`` enrolled a speaker ``--index`` that no command could remove:
    ``--remove --index`` was refused as an option, and so was ``--remove=--index``, which Click parses alike (and
    ``--remove -- --index`` takes ``--`` as the name). The refusal now gives the attached spelling, which removes it;
    the --append warning's hint gives it too."""
    index, people = tmp_path / "spk.faiss", tmp_path / "people"
    source = sorted(p for p in (tiny_synth / "unseen" / "enroll").iterdir() if p.is_dir())[0]
    shutil.copytree(source, people / "--index")
    enrolled = invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speakers-dir", people)
    assert enrolled.exit_code == 0, enrolled.output

    refused = invoke("enroll", "--index", index, "--remove", "--index")
    assert refused.exit_code == 2, refused.output
    hint = refused.output.strip().rsplit("attach it: ", 1)[-1]
    assert hint == "--remove=--index", refused.output
    removed = invoke("enroll", "--index", index, hint)
    assert removed.exit_code == 0 and removed.stdout.startswith("removed --index; 0 speakers remain"), removed.output

    appended = invoke("enroll", "--index", index, "--speaker=--append", "--append", sorted(source.glob("*.pt"))[0])
    assert appended.exit_code == 0, appended.output
    assert appended.stderr.strip().endswith("remove it with --remove=--append)"), appended.stderr
    assert invoke("enroll", "--index", index, "--remove=--append").exit_code == 0


def test_a_speaker_named_like_one_of_enroll_s_arguments_is_not_refused_as_an_option(tmp_path):
    """The refusal of option names took every parameter's names, the ``clips`` argument's too, which is never
    typed: ``enroll --remove clips`` was "clips is an option of enroll, not a speaker name"."""
    index = tmp_path / "spk.faiss"
    done = invoke("enroll", "--index", index, "--remove", "clips")
    assert done.exit_code == 2 and done.output.strip() == f"error: {index}: speaker index not found; nothing to remove", \
        done.output


def test_enroll_many_without_progress_starts_no_tqdm_monitor_thread(trained_run, tiny_synth, tmp_path, monkeypatch):
    """A service enrolling through the API with progress off got a ``tqdm_monitor`` daemon thread for the life of
    its process: tqdm starts it when a bar is built, even a disabled one."""
    import threading

    import tqdm

    if tqdm.tqdm.monitor is not None:  # started by an earlier test's bar
        tqdm.tqdm.monitor.exit()
    monkeypatch.setattr(tqdm.tqdm, "monitor", None)
    folder = tiny_synth / "unseen" / "enroll"
    speaker = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    index = SpeakerIndex.create(tmp_path / "spk.faiss", trained_run / "best.pt")
    index.enroll_many({speaker.name: sorted(speaker.glob("*.pt"))}, progress=False)
    assert index.speakers == [speaker.name]
    assert "tqdm_monitor" not in [thread.name for thread in threading.enumerate()]


def test_a_speaker_folder_with_an_m4a_clip_is_refused_naming_it_not_enrolled_without_it(trained_run, tiny_synth,
                                                                                         tmp_path):
    """An .m4a clip (.ogg before libsndfile's Ogg was read) in a speaker's folder was left out without a word, and the
    speaker enrolled from the other clips, though the same file named on the command line is refused as an unsupported
    clip type; an .mp3 kept beside the clip it was converted to is no clip of its own."""
    index = tmp_path / "spk.faiss"
    folder = tmp_path / "people"
    source = tiny_synth / "unseen" / "enroll"
    speaker = sorted(p.name for p in source.iterdir() if p.is_dir())[0]
    shutil.copytree(source / speaker, folder / speaker)
    converted = sorted((folder / speaker).glob("*.pt"))[0]
    converted.with_suffix(".mp3").write_bytes(b"ID3 the original")
    (folder / speaker / "extra.m4a").write_bytes(b"not read")

    refused = invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speakers-dir", folder)
    assert refused.exit_code != 0
    assert len(refused.output.strip().splitlines()) == 1 and "extra.m4a: unsupported" in refused.output, refused.output
    assert not index.exists()
    (folder / speaker / "extra.m4a").unlink()
    done = invoke("enroll", "--index", index, "--ckpt", trained_run / "best.pt", "--speakers-dir", folder)
    assert done.exit_code == 0, done.output
