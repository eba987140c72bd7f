"""The homework's Boss-baseline code as students write it, kept as a speed reference.

Conformer + self-attention pooling (a softmax over all frames, padding included) + AdMSoftmax loss
with its per-example Python loop, fed by a Dataset that `torch.load`s one file per utterance.
Only the benchmarks import this: it is the yardstick, not part of voxaug.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio
from torch.nn.utils.rnn import pad_sequence


class SelfAttentionPooling(nn.Module):
    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.W = nn.Linear(input_dim, 1)

    def forward(self, batch_rep: torch.Tensor) -> torch.Tensor:
        att_w = F.softmax(self.W(batch_rep).squeeze(-1), dim=-1).unsqueeze(-1)
        return torch.sum(batch_rep * att_w, dim=1)


class AdMSoftmaxLoss(nn.Module):
    def __init__(self, in_features: int, out_features: int, s: float = 30.0, m: float = 0.4) -> None:
        super().__init__()
        self.s, self.m = s, m
        self.fc = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        for W in self.fc.parameters():
            W = F.normalize(W, dim=1)
        x = F.normalize(x, dim=1)
        wf = self.fc(x)
        numerator = self.s * (torch.diagonal(wf.transpose(0, 1)[labels]) - self.m)
        excl = torch.cat([torch.cat((wf[i, :y], wf[i, y + 1:])).unsqueeze(0) for i, y in enumerate(labels)], dim=0)
        denominator = torch.exp(numerator) + torch.sum(torch.exp(self.s * excl), dim=1)
        return -torch.mean(numerator - torch.log(denominator))


class Classifier(nn.Module):
    def __init__(self, d_model: int, n_spks: int, heads: int, ffn: int, layers: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.prenet = nn.Linear(40, d_model)
        self.conformer = torchaudio.models.Conformer(
            input_dim=d_model, num_heads=heads, ffn_dim=ffn, num_layers=layers,
            depthwise_conv_kernel_size=kernel, dropout=dropout,
        )
        self.pooling = SelfAttentionPooling(d_model)
        self.pred_layer = nn.Sequential(nn.Linear(d_model, d_model), nn.BatchNorm1d(d_model))
        self.loss = AdMSoftmaxLoss(d_model, n_spks)

    def forward(self, mels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.prenet(mels)
        lengths = torch.full((mels.shape[0],), mels.shape[1], device=mels.device)
        out, _ = self.conformer(out, lengths)
        stats = self.pooling(out)
        return self.loss(self.pred_layer(stats), labels)


class HW4Dataset(torch.utils.data.Dataset):
    """The homework's myDataset: one torch.load per utterance, random 128-frame segment."""

    def __init__(self, data_dir: str | Path, segment_len: int = 128) -> None:
        self.data_dir, self.segment_len = Path(data_dir), segment_len
        mapping = json.loads((self.data_dir / "mapping.json").read_text(encoding="utf-8"))["speaker2id"]
        metadata = json.loads((self.data_dir / "metadata.json").read_text(encoding="utf-8"))["speakers"]
        self.data = [(u["feature_path"], mapping[s]) for s, utts in metadata.items() for u in utts]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        feat_path, speaker = self.data[index]
        mel = torch.load(self.data_dir / feat_path, weights_only=True)
        if len(mel) > self.segment_len:
            start = random.randint(0, len(mel) - self.segment_len)
            mel = mel[start:start + self.segment_len]
        return torch.FloatTensor(mel), speaker


def collate_batch(batch):
    mel, speaker = zip(*batch)
    return pad_sequence(mel, batch_first=True, padding_value=-20), torch.LongTensor(speaker)
