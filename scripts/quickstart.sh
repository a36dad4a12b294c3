#!/usr/bin/env bash
# The main job end to end on a CPU in a few minutes: set up, make a small labelled audio-visual set (AV-digits),
# pretrain a tiny XKD on its unlabelled training clips with `accelerate launch training/pretrain.py`, and end with
# the linear-probe accuracy of the pretrained video and audio features next to random-init features, and the path
# of a reconstruction picture. Quiet by default (XKD_VERBOSE=1 shows every log line).
# Output in ${XKD_QUICKSTART_DIR:-outputs/quickstart}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${XKD_VENV:-.venv}
OUT=${XKD_QUICKSTART_DIR:-outputs/quickstart}
rm -rf "$OUT/run"
if [ "${XKD_VERBOSE:-0}" != "1" ]; then
  export XKD_LOG_LEVEL=WARNING HF_HUB_DISABLE_PROGRESS_BARS=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 \
    TRANSFORMERS_VERBOSITY=error
fi
"$VENV/bin/python" examples/quickstart.py make-data "$OUT/avdigits"
ACCELERATE_USE_CPU=${ACCELERATE_USE_CPU:-true} "$VENV/bin/accelerate" launch --num_processes 1 --num_machines 1 \
    --mixed_precision no --dynamo_backend no \
    training/pretrain.py --config training/configs/avdigits-tiny.yaml --train-data "$OUT/avdigits/train" \
    --output-dir "$OUT/run"
"$VENV/bin/python" examples/quickstart.py evaluate "$OUT/run" "$OUT/avdigits"
echo "quickstart: done. Exported folders: $OUT/run/pretraining (XKDForPretraining), $OUT/run/teachers (XKDModel)"
