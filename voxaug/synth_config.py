"""`voxaug synth`'s settings, apart from the generator so that `voxaug synth --help` needs no torch."""

from __future__ import annotations

from dataclasses import dataclass

from voxaug.errors import VoxaugError


@dataclass
class SynthConfig:
    speakers: int = 100
    utterances: int = 20
    unseen: int = 10
    enroll_per_unseen: int = 4
    test_per_unseen: int = 6
    impostors: int = 5
    test_fraction: float = 0.1
    sessions_per_speaker: int = 3
    min_seconds: float = 1.5
    max_seconds: float = 3.5
    seed: int = 0
    write_training_audio: bool = False

    @property
    def trained_clips(self) -> int:
        return self.speakers * self.utterances

    @property
    def held_out_clips(self) -> int:
        """The unseen speakers' enrolment and test clips and the impostors' clips (audio twins beside each)."""
        return self.unseen * (self.enroll_per_unseen + self.test_per_unseen) + self.impostors * self.test_per_unseen

    def validate(self) -> None:
        if self.speakers < 2:
            raise VoxaugError(f"--speakers must be at least 2, got {self.speakers}")
        if self.utterances < 2:
            raise VoxaugError(f"--utterances must be at least 2, got {self.utterances}")
        if self.unseen < 0 or self.impostors < 0:
            raise VoxaugError(f"--unseen and --impostors must be >= 0, got {self.unseen}, {self.impostors}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise VoxaugError(f"need 0 < min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}")
