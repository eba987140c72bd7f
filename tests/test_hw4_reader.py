"""The HW4 reader: exact layout, missing mel_len, class ids from mapping.json, and every bad input."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from hw4_factory import make_hw4, rewrite_metadata
from voxaug.data.sources import HW4Source, open_source
from voxaug.data.split import stratified_split
from voxaug.data.store import PackedStore
from voxaug.errors import VoxaugError


def test_reads_layout_and_class_ids(tmp_path):
    root = make_hw4(tmp_path / "d")
    source = HW4Source(root)
    assert source.speakers == ["id10000", "id10001", "id10002"]
    assert source.n_mels == 40
    assert len(source.utterances) == 12
    store = PackedStore.open(source, tmp_path / "cache", progress=False)
    labels = {store.keys[i]: int(store.labels[i]) for i in range(len(store))}
    assert labels["uttr-0000.pt"] == 0 and labels["uttr-0203.pt"] == 2
    first = torch.load(root / "uttr-0101.pt", weights_only=True)
    assert torch.equal(store.utterance(store.keys.index("uttr-0101.pt")), first)


def test_missing_mel_len_takes_length_from_tensor(tmp_path):
    root = make_hw4(tmp_path / "d", with_mel_len=False)
    store = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    for index, key in enumerate(store.keys):
        assert store.lengths[index] == torch.load(root / key, weights_only=True).shape[0]


def test_features_saved_with_requires_grad_are_read_as_data(tmp_path):
    """A tensor saved with requires_grad, or as an nn.Parameter, holds features like any other."""
    root = make_hw4(tmp_path / "d")
    originals = {name: torch.load(root / name, weights_only=True) for name in ("uttr-0000.pt", "uttr-0001.pt")}
    torch.save(originals["uttr-0000.pt"].clone().requires_grad_(), root / "uttr-0000.pt")
    torch.save(torch.nn.Parameter(originals["uttr-0001.pt"].clone()), root / "uttr-0001.pt")
    store = PackedStore.open(HW4Source(root), tmp_path / "cache", progress=False)
    for name, features in originals.items():
        assert torch.equal(store.utterance(store.keys.index(name)), features)


def test_test_split_keeps_testdata_order(tmp_path):
    root = make_hw4(tmp_path / "d")
    source = HW4Source(root, split="test")
    order = [u["feature_path"] for u in json.loads((root / "testdata.json").read_text())["utterances"]]
    assert [u.key for u in source.utterances] == order
    assert all(u.speaker is None for u in source.utterances)


def test_split_is_stratified_and_seeded():
    labels = torch.arange(10).repeat_interleave(20).numpy()
    train, val = stratified_split(labels, 0.1, seed=3)
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == 200
    assert all((labels[val] == s).sum() == 2 for s in range(10))
    again = stratified_split(labels, 0.1, seed=3)
    assert (again[1] == val).all()
    assert not (stratified_split(labels, 0.1, seed=4)[1] == val).all()


def test_split_keeps_groups_whole():
    labels = torch.zeros(12, dtype=torch.long).numpy()
    groups = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    train, val = stratified_split(labels, 0.3, seed=0, groups=groups)
    val_groups = {groups[i] for i in val}
    assert len(val_groups) == 1 and len(val) == 4  # else an empty validation split would pass
    assert not val_groups & {groups[i] for i in train}


def test_split_takes_groups_only_while_they_fit_and_never_splits_a_video():
    labels = np.zeros(20, dtype=np.int64)
    skewed = ["long video"] * 19 + ["short video"]
    for seed in range(10):
        _, val = stratified_split(labels, 0.1, seed=seed, groups=skewed)
        assert val.tolist() == [19], seed  # the short video, not 19 of the 20 clips
    old = [len(stratified_split(labels, 0.1, seed=seed, groups=skewed, version=1)[1]) for seed in range(10)]
    assert 19 in old, "version 1, kept for saved runs, overshoots as it always did"
    mixed = [None] * 6 + ["v1"] * 3 + ["v2"] * 3 + ["v3"] * 8  # some clips directly under the speaker's folder
    for seed in range(10):
        train, val = stratified_split(labels, 0.25, seed=seed, groups=mixed)
        assert 0 < len(val) <= 5
        assert not {mixed[i] for i in val if mixed[i]} & {mixed[i] for i in train if mixed[i]}, seed


def test_version_2_splits_ungrouped_data_exactly_as_version_1_did():
    labels = np.repeat(np.arange(30), 17)
    for groups in (None, [None] * len(labels), ["one video"] * len(labels)):
        for seed in range(3):
            new, old = stratified_split(labels, 0.1, seed, groups), stratified_split(labels, 0.1, seed, groups, version=1)
            assert all((a == b).all() for a, b in zip(new, old))


def test_a_run_saved_before_split_versions_is_split_by_version_1():
    from voxaug.config import TrainConfig

    saved = TrainConfig().to_dict()
    del saved["split_version"]
    assert TrainConfig.from_saved(saved).split_version == 1
    assert TrainConfig.from_dict(saved).split_version == TrainConfig().split_version == 3
    with pytest.raises(VoxaugError, match="split_version must be one of 1, 2, 3"):
        TrainConfig(split_version=4).validate()


def _bad(tmp_path, breaker):
    root = make_hw4(tmp_path / "d")
    breaker(root)
    with pytest.raises(VoxaugError) as info:
        source = open_source(root)
        PackedStore.open(source, tmp_path / "cache", progress=False)
    return str(info.value)


def _set_first_feature(root, value):
    torch.save(value, root / "uttr-0000.pt")


BAD_INPUTS = [
    ("missing metadata", lambda r: (r / "metadata.json").unlink(), ["metadata.json", "not found"]),
    ("malformed metadata", lambda r: (r / "metadata.json").write_text("{not json"), ["metadata.json", "malformed JSON"]),
    ("malformed mapping", lambda r: (r / "mapping.json").write_text("[1, 2"), ["mapping.json", "malformed JSON"]),
    ("mapping without speaker2id", lambda r: (r / "mapping.json").write_text("{}"), ["mapping.json", "speaker2id"]),
    ("missing feature file", lambda r: (r / "uttr-0000.pt").unlink(), ["uttr-0000.pt", "not found"]),
    ("unreadable feature file", lambda r: (r / "uttr-0000.pt").write_bytes(b"garbage bytes"), ["uttr-0000.pt", "corrupt"]),
    ("empty file", lambda r: (r / "uttr-0000.pt").write_bytes(b""), ["uttr-0000.pt", "empty"]),
    ("not a tensor", lambda r: _set_first_feature(r, {"a": 1}), ["uttr-0000.pt", "found dict"]),
    ("1-D tensor", lambda r: _set_first_feature(r, torch.zeros(40)), ["uttr-0000.pt", "2-D"]),
    ("integer tensor", lambda r: _set_first_feature(r, torch.zeros(5, 40, dtype=torch.long)), ["uttr-0000.pt", "float"]),
    ("wrong n_mels", lambda r: _set_first_feature(r, torch.zeros(5, 80)), ["uttr-0000.pt", "40 mel bins, found 80"]),
    ("zero frames", lambda r: _set_first_feature(r, torch.zeros(0, 40)), ["uttr-0000.pt", "0 frames"]),
    ("sparse tensor", lambda r: _set_first_feature(r, torch.ones(5, 40).to_sparse()),
     ["uttr-0000.pt", "expected a dense tensor, found layout torch.sparse_coo"]),
    ("NaN", lambda r: _set_first_feature(r, torch.full((5, 40), float("nan"))), ["uttr-0000.pt", "NaN"]),
    ("Inf", lambda r: _set_first_feature(r, torch.full((5, 40), float("inf"))), ["uttr-0000.pt", "Inf"]),
    ("path escapes with ..", lambda r: rewrite_metadata(r, lambda m: m["speakers"]["id10000"][0].update(feature_path="../x.pt")),
     ["metadata.json", "outside the dataset folder"]),
    ("absolute path", lambda r: rewrite_metadata(r, lambda m: m["speakers"]["id10000"][0].update(feature_path="/etc/passwd")),
     ["metadata.json", "absolute"]),
    ("unknown speaker", lambda r: rewrite_metadata(r, lambda m: m["speakers"].update(nobody=[])), ["metadata.json", "nobody"]),
]


@pytest.mark.parametrize("name,breaker,expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gives_one_clear_line(tmp_path, name, breaker, expected):
    message = _bad(tmp_path, breaker)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message


def test_symlink_out_of_folder_is_refused(tmp_path):
    outside = tmp_path / "outside.pt"
    torch.save(torch.zeros(5, 40), outside)

    def breaker(root):
        os.symlink(outside, root / "link.pt")
        rewrite_metadata(root, lambda m: m["speakers"]["id10000"][0].update(feature_path="link.pt"))

    assert "outside the dataset folder" in _bad(tmp_path, breaker)


@pytest.mark.parametrize("first, second, feature_path", [("loop1.pt", "loop2.pt", "loop1.pt"), ("a", "b", "a/x.pt")])
def test_a_feature_path_through_a_symlink_loop_is_one_clear_line(tmp_path, first, second, feature_path):
    """Path.resolve raises RuntimeError (not OSError) on a loop before Python 3.13: `voxaug` exited 3, "unexpected".
    Python 3.13's returns a path through a loop of folders as it is: the clip was then reported as "feature file not
    found", without naming metadata.json."""
    def breaker(root):
        os.symlink(second, root / first)
        os.symlink(first, root / second)
        rewrite_metadata(root, lambda m: m["speakers"]["id10000"][0].update(feature_path=feature_path))

    message = _bad(tmp_path, breaker)
    assert "\n" not in message and "metadata.json" in message and f"{feature_path!r} is not a usable path" in message


def test_a_feature_path_through_a_looping_folder_is_named_once(tmp_path):
    """The error of a listed path through a loop (``loop -> loop``) held resolved_without_loop's, which named the
    path again, joined to the dataset folder: "feature_path 'loop/uttr-1.pt' is not a usable path
    (.../d/loop/uttr-1.pt: symlink loop ...)"."""
    def breaker(root):
        os.symlink("loop", root / "loop")
        rewrite_metadata(root, lambda m: m["speakers"]["id10000"][0].update(feature_path="loop/uttr-1.pt"))

    message = _bad(tmp_path, breaker)
    assert message.startswith(f"{tmp_path / 'd' / 'metadata.json'}: ") and message.count("uttr-1.pt") == 1, message
    assert message.endswith("feature_path 'loop/uttr-1.pt' is not a usable path: symlink loop (symbolic links that "
                            "lead back to each other)"), message


def test_pickled_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    def breaker(root):
        torch.save({"x": Exploit()}, root / "uttr-0000.pt")

    message = _bad(tmp_path, breaker)
    assert "uttr-0000.pt" in message and "refused" in message
    assert not marker.exists()


def test_a_json_file_with_a_byte_order_mark_is_read_and_a_transposed_tensor_gets_a_hint(tmp_path):
    from voxaug.data.validate import check_features
    from voxaug.safeio import read_json

    (tmp_path / "bom.json").write_bytes('{"n_mels": 40}'.encode("utf-8-sig"))
    assert read_json(tmp_path / "bom.json") == {"n_mels": 40}
    with pytest.raises(VoxaugError, match=r"found 120 \(shape \(40, 120\); transposed\?"):
        check_features(torch.zeros(40, 120), tmp_path / "x.pt", 40)


@pytest.mark.parametrize("text", ['{"n_mels": 1' + "0" * 5000 + ', "speakers": {}}', "[" * 100000 + "]" * 100000],
                         ids=["a 5000-digit number", "arrays nested 100000 deep"])
def test_json_that_python_refuses_to_parse_is_one_clear_line(tmp_path, text):
    """json raises ValueError (int digit limit) or RecursionError here, not JSONDecodeError: `voxaug` exited 3."""
    message = _bad(tmp_path, lambda root: (root / "metadata.json").write_text(text))
    assert "\n" not in message and message.startswith(str(tmp_path / "d" / "metadata.json") + ": unreadable metadata.json")


def test_a_hard_linked_copy_listed_under_another_speaker_is_refused(tmp_path):
    """Only equal paths (after resolving symlinks) were caught: a hard link under a second name trained one clip
    as two speakers."""
    def breaker(root):
        os.link(root / "uttr-0000.pt", root / "uttr-copy.pt")
        rewrite_metadata(root, lambda m: m["speakers"]["id10001"].append({"feature_path": "uttr-copy.pt"}))

    message = _bad(tmp_path, breaker)
    assert "\n" not in message and "metadata.json" in message
    assert "'uttr-copy.pt' is the same file as 'uttr-0000.pt' through a link (under 'id10000' and 'id10001')" in message


def test_a_quantized_feature_tensor_is_refused_without_torch_s_storage_warning(tmp_path):
    """torch warned `TypedStorage is deprecated` (a traceback-like line the user cannot act on) above the refusal."""
    import warnings

    from voxaug.data.validate import load_feature_file

    path = tmp_path / "q.pt"
    torch.save(torch.quantize_per_tensor(torch.randn(5, 40), 0.1, 0, torch.qint8), path)
    torch.storage._reset_warn_typed_storage_removal()  # torch says it once per process: make this load the first
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(VoxaugError, match="q.pt: expected a float tensor, found dtype torch.qint8"):
            load_feature_file(path, 40)
    assert not [str(w.message) for w in caught if "TypedStorage" in str(w.message)]


def test_float64_features_beyond_float32_range_are_refused_for_their_size_not_as_inf(tmp_path):
    """A float64 tensor of 1e39 became Inf in float32 before it was checked: the refusal said it held NaN or Inf."""
    from voxaug.data.validate import check_features

    with pytest.raises(VoxaugError, match=r"x.pt: features hold values as large as 1e\+39"):
        check_features(torch.full((5, 40), 1e39, dtype=torch.float64), tmp_path / "x.pt", 40)
    with pytest.raises(VoxaugError, match="NaN or Inf"):
        check_features(torch.full((5, 40), float("inf"), dtype=torch.float64), tmp_path / "x.pt", 40)
    assert check_features(torch.ones(5, 40, dtype=torch.float64), tmp_path / "x.pt", 40).dtype == torch.float32


def test_an_entry_without_a_usable_feature_path_is_named_by_its_speaker_and_position(tmp_path):
    """An entry with no feature_path (or not an object) said only "feature_path must be a non-empty string, got
    None", leaving the user to search a metadata.json of thousands of entries for it."""
    def drop(entry):
        entry["path"] = entry.pop("feature_path")

    cases = ((lambda m: drop(m["speakers"]["id10001"][2]),
              "metadata.json: speaker 'id10001', utterance 3 of 4: no 'feature_path' (keys: ['mel_len', 'path'])"),
             (lambda m: m["speakers"]["id10002"].__setitem__(0, "uttr-0200.pt"),
              "metadata.json: speaker 'id10002', utterance 1 of 4: expected an object with a 'feature_path', got "
              "'uttr-0200.pt'"),
             (lambda m: m["speakers"]["id10000"][1].update(feature_path="/etc/passwd"),
              "metadata.json: speaker 'id10000', utterance 2 of 4: feature_path '/etc/passwd' is absolute"))
    for number, (edit, problem) in enumerate(cases):
        message = _bad(tmp_path / str(number), lambda root: rewrite_metadata(root, edit))
        assert problem in message, message
    root = make_hw4(tmp_path / "test")
    testdata = json.loads((root / "testdata.json").read_text())
    testdata["utterances"][1] = {"path": "x.pt"}
    (root / "testdata.json").write_text(json.dumps(testdata))
    with pytest.raises(VoxaugError, match=rf"testdata.json: utterance 2 of {len(testdata['utterances'])}: no "
                                          r"'feature_path' \(keys: \['path'\]\)"):
        HW4Source(root, "test")


def test_a_listing_whose_n_mels_differs_from_every_tensor_is_named_in_the_refusal(tmp_path):
    """metadata.json saying n_mels 80 over 40-bin tensors blamed only the first tensor, which was fine: the refusal
    must name the listing whose n_mels it checked against, so the student knows which file to look at."""
    message = _bad(tmp_path, lambda r: rewrite_metadata(r, lambda m: m.update(n_mels=80)))
    assert "\n" not in message and "uttr-0000.pt: expected 80 mel bins, found 40" in message
    assert f"{tmp_path / 'd' / 'metadata.json'} says n_mels 80" in message, message


@pytest.mark.parametrize("ids", [[False, True], [0, True], [0, 1.0], [0, "1"]])
def test_speaker_ids_that_are_not_whole_numbers_are_refused_naming_the_speaker_and_the_id(tmp_path, ids):
    """JSON's ``false``/``true`` passed as ids 0 and 1 (a bool is an int to Python) where any other non-integer id
    was refused."""
    root = make_hw4(tmp_path / "d", speakers=2)
    names = sorted(json.loads((root / "mapping.json").read_text())["speaker2id"])
    (root / "mapping.json").write_text(json.dumps({"speaker2id": dict(zip(names, ids))}))
    bad = next(i for i in ids if type(i) is not int)
    with pytest.raises(VoxaugError, match=f"mapping.json: 'speaker2id' gives '{names[ids.index(bad)]}' the id "
                                          f"{re.escape(json.dumps(bad))}; ids are whole numbers 0..N-1$"):
        open_source(root)


@pytest.mark.parametrize("ids, why", [
    ([0, 1, 3], "no speaker has the id 2 ('id10002' has the id 3)"),
    ([0, 0, 2], "no speaker has the id 1 ('id10000' and 'id10001' share the id 0)"),
    ([-1, 1, 2], "no speaker has the id 0 ('id10000' has the id -1)"),
])
def test_a_gap_in_the_mapping_ids_names_the_missing_id_and_the_speaker_that_took_its_place(tmp_path, ids, why):
    """Ids 0, 1, 3 were refused as "must map each speaker to a distinct id 0..N-1", leaving the user to find which
    of hundreds of ids is missing, and which speaker has the wrong one."""
    root = make_hw4(tmp_path / "d", speakers=3)
    names = sorted(json.loads((root / "mapping.json").read_text())["speaker2id"])
    (root / "mapping.json").write_text(json.dumps({"speaker2id": dict(zip(names, ids))}))
    with pytest.raises(VoxaugError) as refused:
        HW4Source(root)
    assert str(refused.value) == f"{root / 'mapping.json'}: 'speaker2id' must give its speakers the ids 0..2, each once; {why}"


def test_speakers_are_numbered_in_sorted_order_so_a_split_from_names_is_trainings_split():
    """``embed --index`` splits from speaker names; training numbered speakers sorted, and the split's seeded draws
    follow those numbers, so names listed in another order must still get the sorted numbers."""
    from voxaug.data.split import speaker_codes

    names = np.array(["carol", "alice", "bob"] * 6)
    assert speaker_codes(names)[:3].tolist() == [2, 0, 1]
    assert speaker_codes(names, ["bob", "carol", "alice"])[:3].tolist() == [1, 2, 0]
    numbered = np.array([sorted(set(names.tolist())).index(name) for name in names])
    for seed in range(4):
        from_names, from_labels = stratified_split(speaker_codes(names), 0.3, seed), stratified_split(numbered, 0.3, seed)
        assert all((a == b).all() for a, b in zip(from_names, from_labels)), seed


def test_split_takes_a_group_that_fills_the_validation_share_exactly():
    """10 clips at 0.2 want 2 in validation: a video of exactly 2 clips fits, as do the two single clips together;
    either way the share is met, not left at one clip."""
    labels = np.zeros(10, dtype=np.int64)
    groups = ["a", "b", "c", "c", "d", "d", "e", "e", "f", "f"]
    for seed in range(8):
        train, val = stratified_split(labels, 0.2, seed=seed, groups=groups)
        assert len(val) == 2 and len(train) == 8, seed
        assert not {groups[i] for i in val} & {groups[i] for i in train}, seed


def test_a_listed_file_name_that_is_not_ascii_is_found_under_an_ascii_locale(tmp_path):
    """metadata.json, testdata.json and a trials file are UTF-8 text: under ``LC_ALL=C`` with ``PYTHONUTF8=0`` (else
    Python turns UTF-8 mode on) a listed ``uttré.pt`` was refused as "not a usable path ('ascii' codec can't encode ...)",
    though the file is there, because Python names that file's bytes ``uttr\\udcc3\\udca9.pt`` under that locale."""
    import subprocess
    import sys

    root = make_hw4(tmp_path / "data", speakers=2, per_speaker=2)
    renamed = {"uttr-0000.pt": "uttré-0000.pt", "uttr-0001.pt": "中文-0001.pt"}
    for old, new in renamed.items():
        (root / old).rename(root / new)

    def rename_entries(metadata: dict) -> None:
        for entry in (entry for entries in metadata["speakers"].values() for entry in entries):
            entry["feature_path"] = renamed.get(entry["feature_path"], entry["feature_path"])

    rewrite_metadata(root, rename_entries)
    (root / "trials.txt").write_text("1 uttré-0000.pt 中文-0001.pt\n0 uttré-0000.pt uttr-0100.pt\n", encoding="utf-8")
    script = ("import sys; from pathlib import Path; from voxaug.data.sources import HW4Source; "
              "from voxaug.embeddings.evaluation import read_trials; root = Path(sys.argv[1]); "
              "source = HW4Source(root, 'train'); source.fingerprint(); "
              "print(len(source.utterances), len(read_trials(root / 'trials.txt', root)))")
    result = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"})
    assert result.returncode == 0 and result.stdout.split() == ["4", "2"], result.stderr


def test_the_folder_around_an_hw4_folder_is_refused_naming_it(tmp_path):
    """Read as clip folders, the outer folder made Dataset/ one speaker of every train and test clip."""
    make_hw4(tmp_path / "download" / "Dataset")
    with pytest.raises(VoxaugError) as refused:
        open_source(tmp_path / "download")
    assert str(refused.value) == (f"{tmp_path / 'download'}: no mapping.json here, but "
                                  f"{tmp_path / 'download' / 'Dataset'} has one: give that HW4 folder as DATA")


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_dataset_folder_is_resolved_once_per_listing_not_once_per_clip(tmp_path, resolutions_of, split):
    """Each feature_path is resolved and checked to stay inside DATA, whose own resolution was redone for every one:
    half the time of reading the homework's 56,666-clip listing, in every command that reads it."""
    root = make_hw4(tmp_path / "d", speakers=3, per_speaker=6)
    resolved_roots = resolutions_of(root)
    source = HW4Source(root, split)
    assert len(source.utterances) == (18 if split == "train" else 3)
    assert len(resolved_roots) == 1
    assert all(u.path == root.resolve() / u.key for u in source.utterances)
