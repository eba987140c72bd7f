#!/usr/bin/env bash
# The end-to-end demo: synthesise a corpus, train the cpu preset for a few minutes, predict the
# homework CSV, build a FAISS speaker index, enrol unseen speakers and identify their clips.
# Expects `voxaug` on PATH (the README's first set-up command installs it into .venv).
set -euo pipefail
OUT=${1:-demo}
STEPS=${STEPS:-1000}
export VOXAUG_CACHE=${VOXAUG_CACHE:-$OUT/cache}

voxaug synth "$OUT/data" --seed 0
voxaug train "$OUT/data" --out "$OUT/run" --steps "$STEPS" --eval-every 200 --seed 0
voxaug predict "$OUT/data" --ckpt "$OUT/run/best.pt" --out "$OUT/submission.csv"
python3 - "$OUT" <<'PY'
import csv, sys
out = sys.argv[1]
truth = dict(list(csv.reader(open(f"{out}/data/test_labels.csv")))[1:])
rows = list(csv.reader(open(f"{out}/submission.csv")))[1:]
print(f"test accuracy of {out}/submission.csv: {sum(truth[i] == c for i, c in rows) / len(rows):.3f} on {len(rows)} utterances")
PY
