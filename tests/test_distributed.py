"""torchrun on CPU (gloo, 2 processes): DDP training writes one run from rank 0 while the ranks draw
different utterances, resumes exactly, and sharded embedding writes what one process writes; with one
process it still goes through the process group and trains exactly as a plain run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from voxaug.checkpoint import load_checkpoint, load_model
from voxaug.cli.main import app
from voxaug.data.batching import SegmentSampler, rank_share
from voxaug.data.sources import open_source
from voxaug.data.store import PackedStore
from voxaug.errors import VoxaugError
from voxaug.train import TRACE_ENV, TRACE_FILE

from hw4_factory import make_hw4

runner = CliRunner()
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
# warm-up longer than the run: the learning rate of a step does not depend on --steps, so a run
# stopped at step 4 and resumed to 6 must match one run straight to 6
TINY_DDP = ["--eval-every", "2", "--batch", "8", "--segment", "64", "--d-model", "32", "--layers", "1", "--heads", "2",
            "--embedding-dim", "32", "--warmup", "100", "--lr", "0.01", "--augment", "specaug,mixup", "--device", "cpu"]


def torchrun(*args: object, trace: int = 0, processes: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N -m voxaug ARGS``, checked."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", TRACE_ENV: str(trace)}
    command = [*TORCHRUN, f"--nproc_per_node={processes}", "-m", "voxaug", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def trace(run: Path) -> dict[tuple[int, int], list[str]]:
    """(step, rank) -> the utterance keys that rank drew in that step."""
    rows = [json.loads(line) for line in (run / TRACE_FILE).read_text().splitlines()]
    table = {(row["step"], row["rank"]): row["keys"] for row in rows}
    assert len(table) == len(rows), "a (step, rank) pair was traced twice"
    return table


@pytest.fixture(scope="module")
def ddp_run(tiny_synth, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A 4-step run on 2 processes, each step's batches traced."""
    run = tmp_path_factory.mktemp("ddp") / "run"
    result = torchrun("train", tiny_synth, "--out", run, "--steps", 4, *TINY_DDP,
                      "--cache-dir", tmp_path_factory.mktemp("ddp_cache"), trace=4)
    return run, result


def test_torchrun_with_one_process_uses_the_group_and_trains_as_a_plain_run(tiny_synth, tmp_path):
    """One process under torchrun runs DDP over the process group (NCCL on a one-GPU machine), yet its
    weights equal a plain run's, and a plain run's checkpoint resumes under it."""
    common = [tiny_synth, *TINY_DDP, "--cache-dir", tmp_path / "cache"]
    plain = runner.invoke(app, ["train", *map(str, common), "--out", str(tmp_path / "plain"), "--steps", "4"])
    assert plain.exit_code == 0, plain.output
    single = torchrun("train", *common, "--out", tmp_path / "single", "--steps", 4, processes=1)
    assert "DDP: world_size 1 (gloo, cpu)" in single.stdout and "done: 4 steps on 1 process " in single.stdout
    halfway = runner.invoke(app, ["train", *map(str, common), "--out", str(tmp_path / "resumed"), "--steps", "2"])
    assert halfway.exit_code == 0, halfway.output
    torchrun("train", *common, "--out", tmp_path / "resumed", "--steps", 4, "--resume", processes=1)
    expected = load_checkpoint(tmp_path / "plain" / "last.pt")["model"]
    for run in ("single", "resumed"):
        weights = load_checkpoint(tmp_path / run / "last.pt")["model"]
        assert all(torch.equal(weights[name], expected[name]) for name in expected), run


GROUP_LIFETIME_SCRIPT = """
import os, socket, sys, weakref
import torch.distributed as dist
with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                  LOCAL_WORLD_SIZE="1", TORCHELASTIC_RUN_ID="group-lifetime")
groups = []
start_group = dist.init_process_group
def recording_start(*args, **kwargs):
    start_group(*args, **kwargs)
    groups.append(weakref.ref(dist.group.WORLD))
dist.init_process_group = recording_start
destroy_group = dist.destroy_process_group
def checked_destroy(*args, **kwargs):
    destroy_group(*args, **kwargs)
    print("group alive after destroy_process_group:", groups[0]() is not None)
dist.destroy_process_group = checked_destroy
from voxaug.cli.main import app
app(sys.argv[1:], standalone_mode=False)
"""


def group_lifetime(*args: object) -> subprocess.CompletedProcess:
    """``voxaug ARGS`` in a one-process group, saying whether the group outlived destroy_process_group."""
    return subprocess.run([sys.executable, "-c", GROUP_LIFETIME_SCRIPT, *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=180)


def test_a_ddp_run_frees_its_process_group_when_it_leaves_it(tiny_synth, tmp_path):
    """A gloo group that outlives the command is torn down at interpreter exit, where it can abort a finished run
    ('terminate called without an active exception', exit -6: torchrun reported a CI run as failed).
    DDP kept the group alive twice over: the trainer still held its DDP wrapper, and torch._dynamo, which DDP
    imports, keeps references to a group that exists when it is first imported."""
    args = ["train", tiny_synth, "--out", tmp_path / "run", "--steps", 2, *TINY_DDP, "--cache-dir", tmp_path / "cache",
            "--quiet"]
    result = group_lifetime(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DDP: world_size 1 (gloo, cpu)" in result.stdout
    assert "group alive after destroy_process_group: False" in result.stdout, result.stdout


def test_a_failed_ddp_run_frees_its_process_group_when_it_leaves_it(tiny_synth, tmp_path):
    """After a failure the traceback's frames still held the trainer, so DDP's reducer outlived the group's registry
    and destroyed the group later, holding Python's lock while a gloo thread waited for it to release a finished
    broadcast: the failed rank hung for ever (about 1 run in 3), and torchrun with it."""
    run = tmp_path / "run"
    (run / "best.pt").mkdir(parents=True)  # the first checkpoint write fails, after DDP has trained
    result = group_lifetime("train", tiny_synth, "--out", run, "--steps", 2, *TINY_DDP, "--cache-dir", tmp_path / "cache",
                            "--quiet")
    assert f"error: {run / 'best.pt'}: is a folder" in result.stderr, result.stdout + result.stderr
    assert "group alive after destroy_process_group: False" in result.stdout, result.stdout


def test_ddp_training_writes_one_run_from_rank_0(ddp_run):
    run, result = ddp_run
    assert sorted(p.name for p in run.iterdir()) == ["batch_trace.jsonl", "best.pt", "config.json", "curves.png",
                                                      "last.pt", "metrics.jsonl"]
    assert [row["step"] for row in metrics(run)] == [2, 4]  # one line per evaluation, not one per rank
    assert result.stdout.count("DDP: world_size 2 (gloo, cpu)") == 1
    assert result.stdout.count("done: 4 steps on 2 processes") == 1
    config = json.loads((run / "config.json").read_text())
    assert config["run"]["world_size"] == 2 and config["run"]["batch_per_step"] == 16
    last = load_checkpoint(run / "last.pt")
    assert last["world_size"] == 2 and len(last["ranks"]) == 2
    # the plain module's weights (no DDP "module." prefix): the checkpoint serves single-process commands
    loaded = load_model(run / "best.pt")
    assert not any(name.startswith("module.") for name in loaded.model.state_dict())


def test_ddp_ranks_draw_different_utterances_and_masks(ddp_run):
    run, _ = ddp_run
    drawn = trace(run)
    assert sorted(drawn) == [(step, rank) for step in (1, 2, 3, 4) for rank in (0, 1)]
    for step in (1, 2, 3, 4):
        assert len(drawn[step, 0]) == len(drawn[step, 1]) == 8
    rank_0 = {key for step in (1, 2, 3, 4) for key in drawn[step, 0]}
    rank_1 = {key for step in (1, 2, 3, 4) for key in drawn[step, 1]}
    assert len(rank_0) == len(rank_1) == 32 and not rank_0 & rank_1  # 4 x 8 each, all within the first epoch
    ranks = load_checkpoint(run / "last.pt")["ranks"]
    assert not set(ranks[0]["sampler"]["order"].tolist()) & set(ranks[1]["sampler"]["order"].tolist())
    assert not torch.equal(ranks[0]["augment_generator"], ranks[1]["augment_generator"])
    assert not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])


def test_ddp_resume_matches_an_uninterrupted_run(ddp_run, tiny_synth, tmp_path):
    run, _ = ddp_run
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    cache = tmp_path / "cache"
    torchrun("train", tiny_synth, "--out", resumed, "--steps", 6, "--resume", "--cache-dir", cache, "--quiet", trace=6)
    straight = tmp_path / "straight"
    torchrun("train", tiny_synth, "--out", straight, "--steps", 6, *TINY_DDP, "--cache-dir", cache, "--quiet", trace=6)

    def without_time(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]

    assert without_time(metrics(resumed)) == without_time(metrics(straight))
    assert trace(resumed) == trace(straight)  # the same utterances on each rank, before and after the resume
    a, b = load_checkpoint(resumed / "last.pt"), load_checkpoint(straight / "last.pt")
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["model"][name], b["model"][name]) for name in a["model"])


def test_single_process_resume_of_a_ddp_run_is_refused(ddp_run, tiny_synth, tmp_path):
    run, _ = ddp_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    result = runner.invoke(app, ["train", str(tiny_synth), "--out", str(copy), "--steps", "6", "--resume", "--quiet"])
    assert result.exit_code == 2
    assert "was written by a run on 2 process(es)" in result.output and "--nproc_per_node=2" in result.output


def test_ddp_embed_writes_the_single_process_output(ddp_run, tiny_synth, tmp_path):
    run, _ = ddp_run
    options = ["--ckpt", run / "best.pt", "--window", 48, "--hop", 32, "--batch", 8, "--per", "utterance",
               "--device", "cpu", "-q"]
    single = runner.invoke(app, [str(a) for a in ["embed", tiny_synth, "--out", tmp_path / "one", *options,
                                                  "--index", tmp_path / "one" / "spk.faiss"]])
    assert single.exit_code == 0, single.output
    shared = torchrun("embed", tiny_synth, "--out", tmp_path / "two", *options,
                      "--index", tmp_path / "two" / "spk.faiss", "--cache-dir", tmp_path / "cache")
    for name in ("embeddings.npy", "items.csv", "spk.faiss", "spk.faiss.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["embeddings.npy", "items.csv", "spk.faiss",
                                                                     "spk.faiss.json"]
    assert shared.stdout.count("wrote ") == 2  # rank 0 only: embeddings and index
    assert "wrote an utterance index of" in shared.stdout
    counts = re.search(r"wrote (\d+) embeddings .*\(on 2 processes: (\d+) \+ (\d+) windows", shared.stdout)
    assert counts and int(counts[2]) > 0 and int(counts[3]) > 0, shared.stdout  # both ranks embedded windows
    assert len(np.load(tmp_path / "two" / "embeddings.npy")) == int(counts[1])


def test_a_command_that_does_not_share_its_work_runs_on_rank_0_alone(ddp_run, tiny_synth, tmp_path, monkeypatch):
    """Under torchrun every process ran evaluate (predict, export, synth, embed --model...) in full: each printed the
    whole report and wrote the same files as the others, and on a fresh cache packed it with them. Rank 0 now runs it
    alone, saying so once, and the other ranks stop at once (torchrun's variables are set here by hand)."""
    run, _ = ddp_run
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "one-process-command")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["evaluate", str(tiny_synth), "--ckpt", str(run / "last.pt"), "--max-pairs", "50", "--device", "cpu", "-q"]
    monkeypatch.setenv("RANK", "1")
    other = runner.invoke(app, [*args, "--out", str(tmp_path / "rank1")])
    assert other.exit_code == 0 and other.output == "" and not (tmp_path / "rank1").exists(), other.output
    monkeypatch.setenv("RANK", "0")
    main = runner.invoke(app, [*args, "--out", str(tmp_path / "rank0")])
    assert main.exit_code == 0, main.output
    assert main.output.count("note: evaluate does not share its work among processes: rank 0 runs it alone") == 1
    assert sorted(p.name for p in (tmp_path / "rank0").iterdir()) == ["embeddings_map.png", "report.json"]


def test_world_size_without_the_rest_of_a_launch_is_refused_in_one_line(tiny_synth, tmp_path, monkeypatch):
    """WORLD_SIZE left exported in a shell (no torchrun) stopped train as 'unexpected KeyError: RANK' (exit 3), and
    with RANK too as an env:// rendezvous ValueError from inside torch."""
    for name in ("TORCHELASTIC_RUN_ID", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["train", tiny_synth, "--out", tmp_path / "run", "--steps", 2, *TINY_DDP, "--cache-dir", tmp_path / "cache",
            "--quiet"]
    result = runner.invoke(app, list(map(str, args)))
    assert result.exit_code == 2, result.output
    assert "error: WORLD_SIZE=2 is set, but RANK, MASTER_ADDR, MASTER_PORT are not: start the processes with " \
           "torchrun (torchrun --standalone --nproc_per_node=2 -m voxaug ...), or unset WORLD_SIZE" in result.output
    monkeypatch.setenv("RANK", "0")
    result = runner.invoke(app, list(map(str, args)))
    assert result.exit_code == 2 and "but MASTER_ADDR, MASTER_PORT are not" in result.output, result.output


def test_sampler_ranks_share_each_epoch_without_overlap(tmp_path):
    data = make_hw4(tmp_path / "hw4", speakers=3, per_speaker=5)  # 15 utterances: one left out per epoch for 2 ranks
    store = PackedStore.open(open_source(data), tmp_path / "cache", progress=False)
    indices = np.arange(len(store))
    samplers = [SegmentSampler(store, indices, 4, 16, seed=3, rank=rank, world=2) for rank in (0, 1)]
    seen = [[], []]
    for _ in range(7):  # 28 draws per rank: a few epochs of 7
        for rank, sampler in enumerate(samplers):
            seen[rank].append(sampler.next_batch().indices.tolist())
    for epoch in range(4):
        first = [i for batch in seen[0] for i in batch][epoch * 7 : epoch * 7 + 7]
        second = [i for batch in seen[1] for i in batch][epoch * 7 : epoch * 7 + 7]
        assert not set(first) & set(second) and len(set(first) | set(second)) == 14
    assert samplers[0].epoch == samplers[1].epoch
    assert torch.equal(samplers[0].generator.get_state(), samplers[1].generator.get_state())  # in step
    one = SegmentSampler(store, indices, 4, 16, seed=3)
    assert torch.equal(rank_share(one.order, 0, 1), one.order)
    with pytest.raises(VoxaugError, match="cannot be shared by 20 processes"):
        SegmentSampler(store, indices, 4, 16, seed=3, rank=0, world=20)


SLOW_PACKING_SCRIPT = """
import sys, time
from datetime import timedelta
import torch.distributed.distributed_c10d as c10d
c10d.default_pg_timeout = timedelta(seconds=8)
from voxaug.data.sources import HW4Source
load = HW4Source.load
def slow_load(self, utterance):
    time.sleep(1.5)
    return load(self, utterance)
HW4Source.load = slow_load
from voxaug.cli.main import app
app(sys.argv[1:])
"""


def test_the_other_ranks_wait_for_rank_0_to_pack_however_long_it_takes(tmp_path):
    """Rank 0 packs the store while the other ranks wait in a collective, which the process group times out (30 min
    with gloo, 10 with NCCL): a corpus that takes longer to pack stopped every other rank with a timeout (exit 3).
    Here the group's default timeout is cut to 8 s and packing slowed to 18 s."""
    data = make_hw4(tmp_path / "hw4", speakers=3, per_speaker=4)
    script = tmp_path / "slow_packing.py"
    script.write_text(SLOW_PACKING_SCRIPT)
    command = [*TORCHRUN, "--nproc_per_node=2", script, "train", data, "--out", tmp_path / "run", "--steps", 2,
               *TINY_DDP, "--cache-dir", tmp_path / "cache", "--quiet"]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done: 2 steps on 2 processes" in result.stdout


def test_what_a_rank_sends_rank_0_of_an_embed_bucket_holds_each_embedding_once():
    """Under torchrun, embed gathers each rank's bucket results to rank 0 by pickling them (over NCCL, through GPU
    memory); each row was a view of its batch's tensor, and a pickled view carries its whole storage: a bucket of
    64 clips sent 64 times its embeddings (3 MB instead of 49 kB at 192 dimensions)."""
    import pickle

    from voxaug.embeddings.extract import _run_buckets
    from voxaug.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(n_mels=40, d_model=32, num_heads=2, ffn_dim=64, num_layers=1, embedding_dim=192,
                                    num_classes=4))
    clips = [torch.randn(20, 40) for _ in range(64)]
    for with_probabilities in (False, True):
        results = _run_buckets(model, clips.__getitem__, [list(range(64))], torch.device("cpu"), with_probabilities)
        assert len(pickle.dumps(results)) < 2 * 64 * (192 + 4) * 4  # the values themselves, plus pickling's overhead


def test_a_ranks_saved_sampler_order_holds_its_share_alone():
    """Each rank's sampler order was a strided view of the whole epoch permutation, so every evaluation pickled the
    whole permutation from every rank to rank 0, and last.pt stored it once per rank (world times its share)."""
    import io

    permuted = torch.randperm(10_000)
    for world in (1, 4):
        buffer = io.BytesIO()
        torch.save(rank_share(permuted, 0, world), buffer)
        assert buffer.tell() < 10_000 // world * 8 + 2_000
