"""HNSW on vectors shaped like speaker embeddings: recall@1 against exact search, and ms/query, across efSearch.

Random unit vectors are HNSW's worst case (no structure to navigate); an index of speaker
embeddings holds tight clusters, one per speaker. The generator here takes its shape from a
trained model's real embeddings (``voxaug embed`` output: ``embeddings.npy`` + ``items.csv``):

- speaker centres ~ N(0, Σ_between), Σ_between the covariance of the real speakers' centroids;
- each utterance = its speaker's centre + N(0, Σ_within), Σ_within the real pooled within-speaker
  covariance, then scaled to unit length (as the index stores them);
- queries are new utterances of random enrolled speakers, drawn the same way.

With ``--index FILE`` the real embeddings first go through that index's scoring back end, so the
vectors have the dimension and shape the index stores. Exact search (IndexFlatIP) gives the truth.

    python benchmarks/hnsw_speakers.py --embeddings demo/embeddings --index demo/spk.faiss --json hnsw.json
    python benchmarks/hnsw_speakers.py --embeddings DIR --vectors 100000    # a quicker run
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from voxaug.embeddings.index import HNSW_EF_SEARCH, HNSW_NEIGHBOURS, SpeakerIndex
from voxaug.safeio import atomic_write_json
from report import json_output

EF_SWEEP = (16, 32, 64, 128, 256)
RECALL_TARGET, SPEEDUP_TARGET = 0.95, 20.0


def real_shape(embeddings_dir: Path, index: Path | None) -> dict:
    """Between- and within-speaker covariances of a model's real embeddings (in the index's space)."""
    vectors = np.load(embeddings_dir / "embeddings.npy")
    with open(embeddings_dir / "items.csv", encoding="utf-8", errors="surrogateescape", newline="") as handle:
        speakers = np.array([row["speaker"] for row in csv.DictReader(handle)])
    keep = speakers != ""
    vectors, speakers = vectors[keep], speakers[keep]
    if index is not None:
        vectors = SpeakerIndex.load(index).to_space(vectors)
    names = sorted(set(speakers.tolist()))
    centroids = np.stack([vectors[speakers == name].mean(axis=0) for name in names])
    residuals = np.concatenate([vectors[speakers == name] - centroids[i] for i, name in enumerate(names)])
    unit_centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    own = np.einsum("ij,ij->i", vectors, unit_centroids[np.searchsorted(names, speakers)])
    return {"between": np.cov(centroids, rowvar=False), "within": np.cov(residuals, rowvar=False),
            "mean": centroids.mean(axis=0), "dim": vectors.shape[1], "speakers": len(names),
            "utterances": len(vectors), "own_centroid_cosine": float(own.mean())}


def draw(shape: dict, speakers: int, per_speaker: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``speakers * per_speaker`` unit vectors around drawn speaker centres, and ``queries`` fresh ones."""
    rng = np.random.default_rng(seed)
    dim = shape["dim"]
    between = np.linalg.cholesky(shape["between"] + 1e-6 * np.eye(dim))
    within = np.linalg.cholesky(shape["within"] + 1e-6 * np.eye(dim))
    centres = (shape["mean"] + rng.standard_normal((speakers, dim)) @ between.T).astype(np.float32)
    base = np.empty((speakers * per_speaker, dim), dtype=np.float32)
    for start in range(0, speakers, 10_000):
        block = centres[start : start + 10_000]
        noise = rng.standard_normal((len(block) * per_speaker, dim)) @ within.T
        base[start * per_speaker : (start + len(block)) * per_speaker] = np.repeat(block, per_speaker, axis=0) + noise
    owners = rng.integers(0, speakers, queries)
    query = (centres[owners] + rng.standard_normal((queries, dim)) @ within.T).astype(np.float32)
    for array in (base, query):
        array /= np.linalg.norm(array, axis=1, keepdims=True)
    return base, query


def per_query(index: faiss.Index, query: np.ndarray) -> tuple[float, np.ndarray]:
    """Median ms for single-query searches, and each query's top-1 row."""
    found, times = [], []
    for row in query:
        started = time.perf_counter()
        _, ids = index.search(row[None], 1)
        times.append((time.perf_counter() - started) * 1000)
        found.append(ids[0, 0])
    return statistics.median(times), np.array(found)


def run(embeddings_dir: Path, index: Path | None, vectors: int, per_speaker: int, queries: int) -> dict:
    shape = real_shape(embeddings_dir, index)
    base, query = draw(shape, vectors // per_speaker, per_speaker, queries)
    flat = faiss.IndexFlatIP(shape["dim"])
    flat.add(base)
    flat_ms, truth = per_query(flat, query)
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(shape["dim"], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(base)
    build_s = time.perf_counter() - started
    sweep = {}
    for ef in sorted(set(EF_SWEEP) | {HNSW_EF_SEARCH}):
        hnsw.hnsw.efSearch = ef
        ms, found = per_query(hnsw, query)
        sweep[str(ef)] = {"ms": ms, "recall_at_1": float((found == truth).mean()), "speedup": flat_ms / ms}
    meeting = [int(ef) for ef, point in sweep.items()
               if point["recall_at_1"] >= RECALL_TARGET and point["speedup"] >= SPEEDUP_TARGET]
    return {"date": time.strftime("%Y-%m-%d"), "vectors": len(base), "speakers": len(base) // per_speaker,
            "per_speaker": per_speaker, "queries": queries, "dim": shape["dim"], "M": HNSW_NEIGHBOURS,
            "shape_from": {"embeddings": str(embeddings_dir), "index": str(index) if index else None,
                           "speakers": shape["speakers"], "utterances": shape["utterances"],
                           "own_centroid_cosine": shape["own_centroid_cosine"]},
            "flat_ms": flat_ms, "build_s": build_s, "sweep": sweep, "default_ef_search": HNSW_EF_SEARCH,
            "smallest_ef_meeting_target": min(meeting) if meeting else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", type=Path, required=True, help="a `voxaug embed --out` folder of a trained model")
    parser.add_argument("--index", type=Path, help="apply this index's scoring back end first")
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--per-speaker", type=int, default=20, help="utterances per drawn speaker (default 20)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--json", type=json_output)
    args = parser.parse_args(argv)
    for option, value in (("--per-speaker", args.per_speaker), ("--queries", args.queries)):
        if value < 1:
            parser.error(f"{option} must be at least 1, got {value}")
    if args.vectors < 2 * args.per_speaker:
        parser.error(f"--vectors must hold at least two speakers of --per-speaker {args.per_speaker}, got {args.vectors}")
    for path in (args.embeddings / "embeddings.npy", args.embeddings / "items.csv", args.index):
        if path is not None and not path.is_file():
            parser.error(f"{path}: not found (--embeddings is a `voxaug embed --out` folder, --index its index)")
    r = run(args.embeddings, args.index, args.vectors, args.per_speaker, args.queries)
    print(f"{r['vectors']:,} vectors ({r['speakers']:,} speakers x {r['per_speaker']}) of dimension {r['dim']}, shaped "
          f"like {r['shape_from']['embeddings']} (own-centroid cosine {r['shape_from']['own_centroid_cosine']:.3f})")
    print(f"flat: {r['flat_ms']:.2f} ms/query; HNSW M={r['M']} built in {r['build_s']:.0f} s")
    print("| efSearch | ms/query | speed-up vs flat | recall@1 |\n|---|---|---|---|")
    for ef, point in r["sweep"].items():
        print(f"| {ef} | {point['ms']:.3f} | {point['speedup']:.1f}x | {point['recall_at_1']:.3f} |")
    print(f"default efSearch {r['default_ef_search']}; smallest meeting recall >= {RECALL_TARGET} at >= "
          f"{SPEEDUP_TARGET:.0f}x: {r['smallest_ef_meeting_target']}")
    if args.json:
        atomic_write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
