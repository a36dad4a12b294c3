#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. The real clips in ../shared/media are used when present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${XKD_REAL_MEDIA:-}" ] && [ -d ../shared/media ]; then
  export XKD_REAL_MEDIA="$(cd ../shared/media && pwd)"
fi
echo "XKD_REAL_MEDIA=${XKD_REAL_MEDIA:-<unset: real-media tests will be skipped>}"
exec "${XKD_VENV:-.venv}/bin/python" -m pytest -q "$@"
