"""Embedding throughput (length-bucketed vs one by one), identify latency in a warm process with 600
enrolled speakers, and FAISS search on random unit vectors: flat vs HNSW latency, HNSW recall@1.

    python benchmarks/embed_bench.py [--quick] [--vectors N] [--json FILE]

Prints measured numbers; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from voxaug import SpeakerIndex, SpeakerModel
from voxaug.checkpoint import save_checkpoint
from voxaug.config import create_config
from voxaug.embeddings.backend import ScoringBackend
from voxaug.embeddings.extract import embed_tensors
from voxaug.embeddings.index import HNSW_NEIGHBOURS
from voxaug.embeddings.index import SpeakerIndex as IndexData
from voxaug.embeddings.speaker_index import DEFAULT_BACKEND
from voxaug.export import export_onnx
from voxaug.features import FrontendConfig
from voxaug.model import build_model
from voxaug.runtime.onnx_model import OnnxSpeakerModel
from voxaug.safeio import atomic_write_json
from report import at_least, json_output, times


def _cpu_model(classes: int) -> tuple[torch.nn.Module, dict]:
    config = create_config("cpu")
    config.model.num_classes = classes
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    return model, config.to_dict()


def _utterances(count: int, seed: int = 0) -> list[torch.Tensor]:
    """Homework-like lengths: 1.5 to 8 seconds of 40-bin frames."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(int(torch.randint(150, 800, (), generator=g)), 40, generator=g) for _ in range(count)]


def _save_cpu_checkpoint(path: Path, classes: int) -> dict:
    """The cpu preset, untrained, as a checkpoint of ``classes`` speakers (timings do not depend on the weights)."""
    model, config = _cpu_model(classes)
    save_checkpoint(path, {"config": config, "frontend": FrontendConfig().to_dict(),
                           "speakers": [f"spk{i:04d}" for i in range(classes)], "model": model.state_dict(), "step": 0})
    return config


def _one_by_one_utt_per_s(model: torch.nn.Module, tensors: list[torch.Tensor], threads: int) -> float:
    """Utterances per second embedding one utterance per call on ``threads`` torch threads (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        for tensor in tensors:
            embed_tensors(model, [tensor], torch.device("cpu"))
        return len(tensors) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)


def embedding_throughput(count: int = 256) -> dict:
    """Utterances per second: torch length-bucketed against torch one by one on the same threads (what bucketing
    gains), and torch against ONNX Runtime one by one on 1 thread each (what a single-clip identify runs), all on
    the same utterances in the same process."""
    model, _ = _cpu_model(600)
    device = torch.device("cpu")
    tensors = _utterances(count)
    threads = torch.get_num_threads()
    embed_tensors(model, tensors[:4], device)
    start = time.perf_counter()
    embed_tensors(model, tensors, device)
    bucketed = count / (time.perf_counter() - start)
    single = _one_by_one_utt_per_s(model, tensors, threads)
    single_1_thread = _one_by_one_utt_per_s(model, tensors, 1)
    with tempfile.TemporaryDirectory() as tmp:
        _save_cpu_checkpoint(Path(tmp) / "model.pt", 600)
        export_onnx(Path(tmp) / "model.pt", Path(tmp) / "model.onnx")
        onnx_model = OnnxSpeakerModel.load(Path(tmp) / "model.onnx", threads=1)
        arrays = [tensor.numpy() for tensor in tensors]
        onnx_model.embed_features(arrays[0])
        start = time.perf_counter()
        for array in arrays:
            onnx_model.embed_features(array)
        onnx_single = count / (time.perf_counter() - start)
    return {"embed_threads": threads, "embed_utt_per_s": bucketed, "embed_one_by_one_utt_per_s": single,
            "embed_bucketing_speedup": bucketed / single, "embed_one_by_one_1_thread_utt_per_s": single_1_thread,
            "embed_onnx_one_by_one_utt_per_s": onnx_single,
            "embed_onnx_vs_torch_one_by_one": onnx_single / single_1_thread}


def _identify_times(index: SpeakerIndex, paths: list[Path]) -> list[float]:
    index.identify(paths[0])
    times = []
    for path in paths:
        start = time.perf_counter()
        index.identify(path)
        times.append((time.perf_counter() - start) * 1000)
    return times


def identify_latency(speakers: int = 600, clips: int = 100) -> dict:
    """p50/p99 of SpeakerIndex.identify on `.pt` clips, model and index already loaded: with the checkpoint (torch)
    and with its ONNX export (ONNX Runtime), one thread each, alternating rounds in the same process. The index has
    the default scoring back end, fitted on the enrolment vectors, so its re-scoring is timed too."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "model.pt"
        config = _save_cpu_checkpoint(ckpt, speakers)
        export_onnx(ckpt, tmp / "model.onnx")
        rng = np.random.default_rng(0)
        vectors = {f"spk{i:04d}": rng.standard_normal((3, config["model"]["embedding_dim"])) for i in range(speakers)}
        backend = ScoringBackend.fit(DEFAULT_BACKEND, np.concatenate(list(vectors.values())),
                                     np.repeat(list(vectors), 3))
        paths = []
        for i, tensor in enumerate(_utterances(clips, seed=1)):
            paths.append(tmp / f"clip{i}.pt")
            torch.save(tensor, paths[-1])
        indexes = {}
        for engine, model in (("torch", ckpt), ("onnx", tmp / "model.onnx")):
            data = IndexData(dim=config["model"]["embedding_dim"], checkpoint=SpeakerModel.load(model).record(),
                             frontend=FrontendConfig().to_dict(), backend=backend)
            for name, rows in vectors.items():
                data.add(name, rows)
            data.save(tmp / f"{engine}.faiss")
            indexes[engine] = SpeakerIndex.open(tmp / f"{engine}.faiss", threads=1)
        times: dict[str, list[float]] = {"torch": [], "onnx": []}
        for half in (paths[: len(paths) // 2], paths[len(paths) // 2 :]):  # alternate, so load drift hits both
            for engine in ("torch", "onnx"):
                times[engine] += _identify_times(indexes[engine], half)
    return {"identify_ms_p50": float(np.percentile(times["torch"], 50)),
            "identify_ms_p99": float(np.percentile(times["torch"], 99)),
            "identify_ms_p50_onnx": float(np.percentile(times["onnx"], 50)),
            "identify_ms_p99_onnx": float(np.percentile(times["onnx"], 99)), "identify_speakers": speakers,
            "identify_backend": DEFAULT_BACKEND}


def search_cost(speakers: int = 600, queries: int = 300, dim: int = 192) -> dict:
    """Median ms per single-query speaker search (an embedding in, top-5 out) for each back end, on random vectors
    enrolled 3 per speaker: what the back end adds to identify beyond the network (``plda`` re-scores the 200
    nearest speakers by PLDA)."""
    rng = np.random.default_rng(0)
    enrolment = rng.standard_normal((speakers * 3, dim))
    names = np.repeat([f"spk{i:04d}" for i in range(speakers)], 3)
    probes = rng.standard_normal((queries, dim))
    result = {"search_speakers": speakers}
    for kind in ("none", "lda", "plda"):
        index = IndexData(dim=dim, backend=ScoringBackend.fit(kind, enrolment, names))
        for name in dict.fromkeys(names):
            index.add(name, enrolment[names == name])
        built = index.faiss_index()
        index.search(probes[:20], 5, built)  # warm-up, and the PLDA speaker models computed once
        times = []
        for probe in probes:
            start = time.perf_counter()
            index.search(probe[None], 5, built)
            times.append((time.perf_counter() - start) * 1000)
        result[f"search_ms_{kind}"] = statistics.median(times)
    return result


def faiss_search(vectors: int = 1_000_000, dim: int = 192, queries: int = 1000, ef_search: int = 128) -> dict:
    """Per-query latency of exact inner product vs HNSW (single queries), and HNSW recall@1."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((vectors, dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    query = base[rng.choice(vectors, queries, replace=False)] + 0.1 * rng.standard_normal((queries, dim), dtype=np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(dim)
    flat.add(base)
    start = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(base)
    build_s = time.perf_counter() - start

    def per_query_ms(index: faiss.Index, count: int) -> tuple[float, np.ndarray]:
        found, times = [], []
        for row in query[:count]:
            start = time.perf_counter()
            _, ids = index.search(row[None], 1)
            times.append((time.perf_counter() - start) * 1000)
            found.append(ids[0, 0])
        return statistics.median(times), np.array(found)

    flat_ms, truth = per_query_ms(flat, min(queries, 200))
    sweep = {}
    for ef in sorted({64, ef_search, 256}):
        hnsw.hnsw.efSearch = ef
        ms, approx = per_query_ms(hnsw, min(queries, 200))
        sweep[ef] = {"ms": ms, "recall_at_1": float((approx == truth).mean())}
    chosen = sweep[ef_search]
    return {"faiss_vectors": vectors, "faiss_flat_ms": flat_ms, "faiss_hnsw_ms": chosen["ms"],
            "faiss_hnsw_speedup": flat_ms / chosen["ms"], "faiss_hnsw_recall_at_1": chosen["recall_at_1"],
            "faiss_hnsw_build_s": build_s, "faiss_hnsw_ef_search": ef_search,
            "faiss_hnsw_sweep": {str(k): v for k, v in sweep.items()}}


def run(quick: bool = False, vectors: int | None = None) -> dict:
    torch.set_num_threads(2)
    result = embedding_throughput(64 if quick else 256)
    result.update(identify_latency(clips=50 if quick else 200))
    result.update(faiss_search(vectors if vectors is not None else 100_000 if quick else 1_000_000))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer utterances and 100,000 vectors")
    parser.add_argument("--vectors", type=at_least(1000), help="FAISS base vectors (default 1,000,000)")
    parser.add_argument("--json", type=json_output)
    parser.add_argument("--search-cost", action="store_true", help="only the speaker search's cost per back end")
    args = parser.parse_args()
    if args.search_cost:
        r = search_cost()
        print(f"speaker search, {r['search_speakers']} speakers, one query, top-5: " + ", ".join(
            f"{kind} {r[f'search_ms_{kind}']:.3f} ms" for kind in ("none", "lda", "plda"))
            + f"; plda {r['search_ms_plda'] / r['search_ms_lda']:.1f}x lda")
        if args.json:
            atomic_write_json(args.json, r)
        return
    r = run(args.quick, args.vectors)
    print(f"embedding (cpu preset), {r['embed_threads']} threads: {r['embed_utt_per_s']:.1f} utt/s bucketed, "
          f"{r['embed_one_by_one_utt_per_s']:.1f} utt/s one by one ({r['embed_bucketing_speedup']:.2f}x)")
    print(f"embedding one by one, 1 thread: ONNX Runtime {r['embed_onnx_one_by_one_utt_per_s']:.1f} utt/s, torch "
          f"{r['embed_one_by_one_1_thread_utt_per_s']:.1f} utt/s ({r['embed_onnx_vs_torch_one_by_one']:.2f}x)")
    print(f"identify, warm, {r['identify_speakers']} speakers: p50 {r['identify_ms_p50']:.1f} ms, p99 {r['identify_ms_p99']:.1f} ms "
          f"(torch); p50 {r['identify_ms_p50_onnx']:.1f} ms, p99 {r['identify_ms_p99_onnx']:.1f} ms (ONNX Runtime)")
    print(f"FAISS {r['faiss_vectors']:,} x 192: flat {r['faiss_flat_ms']:.2f} ms/query, HNSW {r['faiss_hnsw_ms']:.3f} ms/query "
          f"({times(r['faiss_hnsw_speedup'])}), recall@1 {r['faiss_hnsw_recall_at_1']:.3f} at efSearch "
          f"{r['faiss_hnsw_ef_search']}, build {r['faiss_hnsw_build_s']:.0f} s")
    for ef, point in r["faiss_hnsw_sweep"].items():
        print(f"  efSearch {ef:>4}: {point['ms']:.3f} ms/query, recall@1 {point['recall_at_1']:.3f}")
    if args.json:
        atomic_write_json(args.json, r)


if __name__ == "__main__":
    main()
