#!/usr/bin/env bash
# The end-to-end demo: synthesise a corpus, train the cpu preset for a few minutes, predict the
# homework CSV, build a FAISS speaker index with its scoring back end, enrol unseen speakers,
# calibrate the "unknown" threshold and identify clips of enrolled and never-enrolled speakers.
# STEPS=1000 bash demo.sh demo trains for half the cpu preset's 2000 steps (faster, weaker model).
# Expects `voxaug` on PATH (the README's first set-up command installs it into .venv).
set -euo pipefail
usage="usage: [STEPS=N] bash demo.sh [OUT]  (OUT: a new or empty folder, default demo; STEPS: training steps, default 2000)"
case ${1:-} in
    -h | --help) echo "$usage"; exit 0 ;;
    -*) echo "error: $1: unknown option; $usage" >&2; exit 2 ;;
esac
[ $# -le 1 ] || { echo "error: one folder at most, got $#: $*; $usage" >&2; exit 2; }
OUT=${1:-demo}
STEPS=${STEPS:-2000}
if ! [[ $STEPS =~ ^[0-9]+$ ]] || (( 10#$STEPS == 0 )); then  # now, not in `voxaug train` after minutes of synth
    echo "error: STEPS must be a positive whole number, got '$STEPS'" >&2
    exit 2
fi
# synth checks OUT/data only: `bash demo.sh .` wrote its run, index and embeddings/ into the checkout
if [ -e "$OUT" ] && [ -n "$(ls -A -- "$OUT" 2>/dev/null)" ]; then
    echo "error: $OUT: not a new or empty folder (an earlier or interrupted demo run?); remove it or name another; $usage" >&2
    exit 2
fi
export VOXAUG_CACHE=${VOXAUG_CACHE:-$OUT/cache}

echo "== 1. synthesise a corpus (training speakers + unseen speakers + impostors)"
voxaug synth "$OUT/data" --seed 0

echo "== 2. train the cpu preset with the default augmentation"
voxaug train "$OUT/data" --out "$OUT/run" --steps "$STEPS" --eval-every 200 --seed 0

echo "== 3. predict the homework CSV for testdata.json"
voxaug predict "$OUT/data" --ckpt "$OUT/run/best.pt" --out "$OUT/submission.csv"
python3 - "$OUT" <<'PY'
import csv, sys
out = sys.argv[1]
truth = dict(list(csv.reader(open(f"{out}/data/test_labels.csv")))[1:])
rows = list(csv.reader(open(f"{out}/submission.csv")))[1:]
print(f"test accuracy of {out}/submission.csv: {sum(truth[i] == c for i, c in rows) / len(rows):.3f} on {len(rows)} utterances")
PY

# best.pt (best validation accuracy) is the classifier; the index is built from last.pt, the end of training
# (docs/identification.md, "Which checkpoint to embed with").
echo "== 4. export embeddings and a FAISS speaker index of the training speakers (scoring back end + AS-norm cohort)"
voxaug embed --ckpt "$OUT/run/last.pt" "$OUT/data" --out "$OUT/embeddings" --index "$OUT/spk.faiss"

echo "== 5. enrol the unseen speakers without retraining (every unseen/enroll/<speaker>/ folder, one process)"
voxaug enroll --index "$OUT/spk.faiss" --speakers-dir "$OUT/data/unseen/enroll"

echo "== 6. evaluate, and calibrate the index's 'unknown' threshold at a 1% false-alarm rate"
voxaug evaluate --ckpt "$OUT/run/last.pt" "$OUT/data" --enroll "$OUT/data/unseen/enroll" --test "$OUT/data/unseen/test" \
    --index "$OUT/spk.faiss" --calibrate --target-far 0.01 --impostors "$OUT/data/unseen/impostors" --out "$OUT/report"

echo "== 7. identify held-out clips of the unseen speakers among all enrolled speakers, and clips of impostors"
first_clips=()  # the first clip of each of the first two speakers, each path one argument (OUT may hold spaces)
for speaker in "$OUT"/data/unseen/test/*/; do
    clips=("$speaker"*.pt)
    first_clips+=("${clips[0]}")
    [ "${#first_clips[@]}" -lt 2 ] || break
done
voxaug identify --index "$OUT/spk.faiss" --top-k 3 "${first_clips[@]}"
voxaug identify --index "$OUT/spk.faiss" --json "$OUT"/data/unseen/test/*/*.pt > "$OUT/identify.jsonl"
voxaug identify --index "$OUT/spk.faiss" --json "$OUT"/data/unseen/impostors/*/*.pt > "$OUT/impostors.jsonl"
python3 - "$OUT/identify.jsonl" "$OUT/impostors.jsonl" "$OUT/spk.faiss.json" "$OUT/report/report.json" <<'PY'
import json, sys
from pathlib import Path
rows = [json.loads(line) for line in open(sys.argv[1])]
strangers = [json.loads(line) for line in open(sys.argv[2])]
enrolled = len(json.load(open(sys.argv[3]))["labels"])
predicted = json.load(open(sys.argv[4]))["open_set"]["acceptance"]
right = sum(row["top"][0]["speaker"] == Path(row["clip"]).parent.name for row in rows)
accepted = sum(row["decision"] != "unknown" for row in rows)
unknown = sum(row["decision"] == "unknown" for row in strangers)
threshold = rows[0]["threshold"]
print(f"{right} of {len(rows)} held-out clips of unseen speakers identified among {enrolled} enrolled speakers "
      f"({right / len(rows):.3f}; chance {1 / enrolled:.3f})")
print(f"threshold {threshold['value']:.3f} ({threshold['source']}): {accepted / len(rows):.3f} of enrolled speakers' clips "
      f"accepted (evaluate predicted {predicted:.3f}); {unknown} of {len(strangers)} impostor clips answered unknown "
      f"({unknown / len(strangers):.3f})")
PY
