"""Build small HW4-layout folders by hand, so tests can break them in precise ways."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def make_hw4(root: Path, speakers: int = 3, per_speaker: int = 4, n_mels: int = 40, frames: int = 50,
             with_mel_len: bool = True, seed: int = 0) -> Path:
    """Write mapping.json, metadata.json, testdata.json and uttr-*.pt with separable random features."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    names = [f"id{10000 + i}" for i in range(speakers)]
    metadata: dict[str, list] = {}
    test = []
    for s, name in enumerate(names):
        metadata[name] = []
        for u in range(per_speaker + 1):
            length = frames + int(torch.randint(0, 20, (), generator=g))
            features = torch.randn(length, n_mels, generator=g) + 3.0 * s
            file = f"uttr-{s:02d}{u:02d}.pt"
            torch.save(features, root / file)
            entry = {"feature_path": file, "mel_len": length} if with_mel_len else {"feature_path": file}
            (test if u == per_speaker else metadata[name]).append(entry)
    (root / "mapping.json").write_text(json.dumps({
        "speaker2id": {n: i for i, n in enumerate(names)},
        "id2speaker": {str(i): n for i, n in enumerate(names)},
    }))
    (root / "metadata.json").write_text(json.dumps({"n_mels": n_mels, "speakers": metadata}))
    (root / "testdata.json").write_text(json.dumps({"n_mels": n_mels, "utterances": test}))
    return root


def rewrite_metadata(root: Path, edit) -> None:
    """Apply ``edit`` to the parsed metadata.json and write it back."""
    metadata = json.loads((root / "metadata.json").read_text())
    edit(metadata)
    (root / "metadata.json").write_text(json.dumps(metadata))
