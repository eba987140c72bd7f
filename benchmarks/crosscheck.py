"""An independent held-out check: a speaker set from another generator (espeak-ng), never used to tune.

``voxaug synth`` makes voices with its own source-filter model and its own session effects, so an
augmentation or a scoring back end can look good by fitting that one generator. This script builds
a second set that shares none of its code: espeak-ng voices (accent x voice variant x pitch x rate)
read random English text, and every utterance gets its own channel (2-3 peaking biquads, sometimes
a telephone band), room (a sparse early-reflection + noise-tail impulse response) and noise (white,
pink, brown or babble of other voices) from torchaudio and numpy. It is written in the HW4 layout
(with ``test_labels.csv``) plus ``unseen/{enroll,test}/<speaker>/`` newcomers and ``impostors/``
speakers who are never enrolled, and features go through voxaug's front end.

    apt-get install espeak-ng                      # the only extra: the generator is a system program
    python benchmarks/crosscheck.py build OUT      # 60 training speakers, 30 newcomers, 20 impostors
    python benchmarks/crosscheck.py train OUT --arms "none;DEFAULT" --steps 3000 --seeds 3 --json r.json

``train`` trains every arm on OUT and reports validation accuracy and accuracy on OUT's test
utterances (``predict`` against ``test_labels.csv``); ``DEFAULT`` stands for voxaug's default.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from voxaug.audio import write_audio
from voxaug.augment.pipeline import DEFAULT_AUGMENT
from voxaug.features import FrontendConfig, log_mel
from voxaug.safeio import atomic_write_json
from report import arm_list, at_least, folder_name, json_output

ACCENTS = ["en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
            "Alex", "Andy", "Annie", "Denis", "Gene", "Hugo", "Jacky", "Lee", "Mario", "Michael", "Mike", "adam",
            "anika", "aunty", "belinda", "benjamin", "boris", "caleb", "david", "ed", "edward", "grandma", "grandpa",
            "iven", "john", "linda", "max", "michel", "norbert", "paul", "quincy", "rob", "robert", "shelby", "steph",
            "travis", "victor", "zac"]
WORDS = ("time person year way day thing man world life hand part child eye woman place work week case point number "
         "group problem fact house water money story night month lot right study book job word business issue side "
         "kind head far black long both little important small large big young old different own early only "
         "public bad able strong sure clear whole free full special real best better city power country school "
         "music morning river garden window paper market letter doctor table family friend animal summer winter "
         "travel answer bring carry follow listen remember wonder speak teach write build change open begin "
         "today tomorrow quickly slowly never always often again together almost enough later maybe perhaps").split()


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little"))


def draw_voice(rng: np.random.Generator) -> dict:
    return {"accent": str(rng.choice(ACCENTS)), "variant": str(rng.choice(VARIANTS)),
            "pitch": int(rng.integers(20, 80)), "rate": int(rng.integers(130, 195)), "gap": int(rng.integers(0, 4))}


def speak(voice: dict, text: str, rng: np.random.Generator) -> np.ndarray:
    """espeak-ng's waveform for ``text`` in ``voice`` (pitch and rate drift a little per utterance), 16 kHz."""
    pitch = int(np.clip(voice["pitch"] + rng.integers(-4, 5), 0, 99))
    rate = int(voice["rate"] * rng.uniform(0.92, 1.08))
    command = ["espeak-ng", "-v", f"{voice['accent']}+{voice['variant']}", "-p", str(pitch), "-s", str(rate),
               "-g", str(voice["gap"]), "--stdout", text]
    wav = subprocess.run(command, check=True, capture_output=True).stdout
    with tempfile.NamedTemporaryFile(suffix=".wav") as handle:
        handle.write(wav)
        handle.flush()
        audio, rate_in = soundfile.read(handle.name, dtype="float32")
    wave = torchaudio.functional.resample(torch.from_numpy(audio), rate_in, 16000)
    return wave.numpy()


def coloured_noise(kind: str, samples: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(samples)
    if kind == "white":
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.maximum(np.fft.rfftfreq(samples), 1.0 / samples)
    spectrum /= freqs ** (0.5 if kind == "pink" else 1.0)
    return np.fft.irfft(spectrum, samples)


def session_effects(wave: np.ndarray, rng: np.random.Generator, babble: list[np.ndarray]) -> np.ndarray:
    """Channel (peaking biquads, sometimes a telephone band), room and noise, each drawn for this utterance."""
    x = torch.from_numpy(wave.astype(np.float32))
    for _ in range(int(rng.integers(2, 4))):
        x = torchaudio.functional.equalizer_biquad(x, 16000, float(rng.uniform(150, 5000)), float(rng.uniform(-8, 8)),
                                                   float(rng.uniform(0.5, 2.0)))
    if rng.random() < 0.2:
        x = torchaudio.functional.bandpass_biquad(x, 16000, 1200.0, 0.6)
    if rng.random() < 0.6:
        rt60 = rng.uniform(0.15, 0.9)
        length = int(rt60 * 16000)
        t = np.arange(length) / 16000
        rir = rng.standard_normal(length) * np.exp(-6.9 * t / rt60) * rng.uniform(0.05, 0.5)
        rir[0] = 1.0
        for _ in range(6):  # early reflections
            rir[int(rng.integers(40, 1200))] += rng.uniform(-0.6, 0.6)
        x = torchaudio.functional.fftconvolve(x, torch.from_numpy((rir / np.linalg.norm(rir)).astype(np.float32)))
        x = x[: len(wave)]
    y = x.numpy().astype(np.float64)
    if rng.random() < 0.8:
        kind = str(rng.choice(["white", "pink", "brown", "babble"]))
        if kind == "babble":
            noise = np.zeros(len(y))
            for other in rng.choice(len(babble), 3, replace=False):
                clip = np.resize(babble[int(other)], len(y))
                noise += np.roll(clip, int(rng.integers(0, len(y))))
        else:
            noise = coloured_noise(kind, len(y), rng)
        snr = rng.uniform(0, 25)
        y = y + noise * np.sqrt(np.mean(y ** 2) / max(np.mean(noise ** 2), 1e-12) * 10 ** (-snr / 10))
    y = y / max(np.abs(y).max(), 1e-8) * rng.uniform(0.1, 0.9)
    return y.astype(np.float32)


def sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(6, 14))))


def build(out: Path, speakers: int = 60, utterances: int = 20, newcomers: int = 30, enroll: int = 5, test: int = 5,
          impostors: int = 20, test_fraction: float = 0.15, seed: int = 0) -> dict:
    """Write the set; same seed, same files."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    out.mkdir(parents=True, exist_ok=True)
    frontend = FrontendConfig()
    voices = {}
    seen: set[tuple] = set()
    names = [f"spk{i:03d}" for i in range(speakers)] + [f"new{i:03d}" for i in range(newcomers)] \
        + [f"imp{i:03d}" for i in range(impostors)]
    for name in names:
        rng = _rng(seed, name, "voice")
        while True:
            voice = draw_voice(rng)
            key = (voice["accent"], voice["variant"], voice["pitch"] // 6, voice["rate"] // 12)
            if key not in seen:
                seen.add(key)
                voices[name] = voice
                break
    babble_rng = _rng(seed, "babble")
    babble = [speak(draw_voice(babble_rng), sentence(babble_rng), babble_rng) for _ in range(12)]

    def utterance(name: str, index: int) -> tuple[np.ndarray, torch.Tensor]:
        rng = _rng(seed, name, index)
        wave = session_effects(speak(voices[name], sentence(rng), rng), rng, babble)
        return wave, log_mel(torch.from_numpy(wave), frontend)

    metadata: dict[str, list] = {}
    test_entries, labels = [], []
    for name in names[:speakers]:
        metadata[name] = []
        for index in range(utterances):
            _, features = utterance(name, index)
            file = f"uttr-{hashlib.sha1(f'{seed}|{name}|{index}'.encode()).hexdigest()[:24]}.pt"
            torch.save(features.clone(), out / file)
            entry = {"feature_path": file, "mel_len": int(features.shape[0])}
            if index < int(round(test_fraction * utterances)):
                test_entries.append(entry)
                labels.append((file, name))
            else:
                metadata[name].append(entry)
    for name in names[speakers:]:
        newcomer = name.startswith("new")
        for index in range(enroll + test if newcomer else test):
            wave, features = utterance(name, index)
            part = ("enroll" if index < enroll else "test") if newcomer else "impostors"
            folder = out / ("unseen" if newcomer else "") / part / name
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(features.clone(), folder / f"{index:03d}.pt")
            write_audio(folder / f"{index:03d}.wav", torch.from_numpy(wave), 16000)
    atomic_write_json(out / "mapping.json", {"speaker2id": {s: i for i, s in enumerate(names[:speakers])},
                                             "id2speaker": {str(i): s for i, s in enumerate(names[:speakers])}})
    atomic_write_json(out / "metadata.json", {"n_mels": frontend.n_mels, "speakers": metadata})
    atomic_write_json(out / "testdata.json", {"n_mels": frontend.n_mels, "utterances": test_entries})
    with open(out / "test_labels.csv", "w", encoding="utf-8") as handle:
        handle.write("Id,Category\n" + "".join(f"{file},{name}\n" for file, name in labels))
    atomic_write_json(out / "voices.json", voices)
    return {"speakers": speakers, "newcomers": newcomers, "impostors": impostors, "test_utterances": len(test_entries)}


STDERR_LINES = 5
"""Last lines of a failed `voxaug` command's stderr that ``train`` shows: its one-line ``error:`` among them."""


class ArmFailed(Exception):
    """A `voxaug` command of an arm failed; the message names it and ends with the last lines of its stderr."""


def run_voxaug(arguments: list[str], env: dict | None = None) -> None:
    """`voxaug ARGUMENTS` in a subprocess. A failure raises ``ArmFailed`` with voxaug's own message: the bare
    CalledProcessError named the command and its exit status only."""
    done = subprocess.run([sys.executable, "-m", "voxaug", *arguments], capture_output=True, text=True,
                          errors="replace", env=env)
    if done.returncode != 0:
        last = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()][-STDERR_LINES:]
        raise ArmFailed(f"`voxaug {' '.join(arguments)}` exited with status {done.returncode}:\n"
                        + "\n".join(f"  {line}" for line in last or ["(nothing on stderr)"]))


def train_arm(data: Path, out: Path, augment: str, seed: int, steps: int, options: tuple[str, ...] = ()) -> dict:
    """`voxaug train [options]` then `voxaug predict` as a user runs them, in the caller's environment (training on one
    thread): validation and test accuracy, both of ``last.pt`` (the end of the schedule), so that the 300 held-out
    clips are scored by one model that no held-out clip chose."""
    torch.set_num_threads(1)
    env_cache = ["--cache-dir", str(out.parent / "cache")]
    run = out / "run"
    run_voxaug(["train", str(data), "--out", str(run), "--augment", augment, "--steps", str(steps), "--seed", str(seed),
                "--device", "cpu", "--quiet", *env_cache, *options], env={**os.environ, "OMP_NUM_THREADS": "1"})
    submission = out / "submission.csv"
    run_voxaug(["predict", str(data), "--ckpt", str(run / "last.pt"), "--out", str(submission), "--device", "cpu",
                "--quiet", *env_cache])
    truth = dict(list(csv.reader((data / "test_labels.csv").read_text(encoding="utf-8").splitlines()))[1:])
    rows = list(csv.reader(submission.read_text(encoding="utf-8").splitlines()))[1:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    return {"augment": augment, **({"options": " ".join(options)} if options else {}), "seed": seed, "steps": steps,
            "input_norm": config["model"]["input_norm"], "segment": config["segment"], "batch": config["batch"],
            "val_acc": metrics[-1]["val_acc"],
            "train_acc": metrics[-1]["train_acc"], "test_acc": sum(truth[i] == c for i, c in rows) / len(rows),
            "val_clips": config["run"]["val_utterances"], "test_clips": len(rows),
            "checkpoint": str(run / "last.pt")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="write the set")
    make.add_argument("out", type=Path)
    make.add_argument("--speakers", type=at_least(2), default=60)
    make.add_argument("--newcomers", type=at_least(0), default=30)
    make.add_argument("--impostors", type=at_least(0), default=20)
    make.add_argument("--seed", type=int, default=0)
    train = commands.add_parser("train", help="train arms on a built set; validation and test accuracy")
    train.add_argument("data", type=Path)
    train.add_argument("--arms", type=arm_list, default="none;DEFAULT")
    train.add_argument("--steps", type=at_least(1), default=3000)
    train.add_argument("--seeds", type=at_least(1), default=3)
    train.add_argument("--first-seed", type=int, default=0)
    train.add_argument("--jobs", type=at_least(1), default=2)
    train.add_argument("--workdir", type=folder_name, default=None)
    train.add_argument("--json", type=json_output)
    train.add_argument("--train-options", default="", help="more `voxaug train` options for every arm, e.g. "
                                                           "\"--input-norm mean\"")
    args = parser.parse_args(argv)
    if args.command == "build":
        started = time.perf_counter()
        print(json.dumps(build(args.out, args.speakers, newcomers=args.newcomers, impostors=args.impostors,
                               seed=args.seed)), f"in {time.perf_counter() - started:.0f}s")
        return 0
    arms = [arm.replace("DEFAULT", DEFAULT_AUGMENT) for arm in args.arms]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="voxaug-crosscheck-"))
    runs = [(seed, arm) for seed in range(args.first_seed, args.first_seed + args.seeds) for arm in arms]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(train_arm, args.data, work / f"{arm.replace(',', '+')}-seed{seed}", arm, seed, args.steps,
                               tuple(args.train_options.split())) for seed, arm in runs]
        rows = []
        try:
            for future in futures:
                rows.append(future.result())
                print(json.dumps(rows[-1]), flush=True)
        except ArmFailed as failed:
            for future in futures:  # those not started yet; the running ones finish before the pool closes
                future.cancel()
            print(f"error: {failed}", file=sys.stderr)
            return 1
    print(f"\n| augment | val acc | test acc | clean train acc |  ({args.seeds} seeds, {args.steps} steps)\n|---|---|---|---|")
    for arm in arms:
        mine = [r for r in rows if r["augment"] == arm]
        print(f"| `{arm}` | {statistics.mean(r['val_acc'] for r in mine):.3f} | "
              f"{statistics.mean(r['test_acc'] for r in mine):.3f} | {statistics.mean(r['train_acc'] for r in mine):.3f} |")
    if args.json:
        atomic_write_json(args.json, {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, "
                                      f"{platform.platform()}", "steps": args.steps, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
