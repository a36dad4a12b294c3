#!/usr/bin/env bash
# The main job end to end on a CPU in a few minutes: set up, make demo clips, pretrain a tiny XKD with
# `accelerate launch training/pretrain.py`, export the teachers, load them back with from_pretrained and print
# the features of a clip. Output in ${XKD_QUICKSTART_DIR:-outputs/quickstart}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${XKD_VENV:-.venv}
OUT=${XKD_QUICKSTART_DIR:-outputs/quickstart}
rm -rf "$OUT/run"
"$VENV/bin/python" examples/quickstart.py make-clips "$OUT/clips"
ACCELERATE_USE_CPU=${ACCELERATE_USE_CPU:-true} "$VENV/bin/accelerate" launch --num_processes 1 --num_machines 1 \
    --mixed_precision no --dynamo_backend no \
    training/pretrain.py --config training/configs/tiny.yaml --train-data "$OUT/clips" --output-dir "$OUT/run" \
    --max-steps 12
CLIP=$(ls "$OUT"/clips/* | head -n 1)
"$VENV/bin/python" examples/quickstart.py features "$OUT/run/teachers" "$CLIP"
echo "quickstart: done. Exported folders: $OUT/run/pretraining (XKDForPretraining), $OUT/run/teachers (XKDModel)"
