#!/usr/bin/env bash
# Tests of the training pipeline (tools/train/tests): reward, data, masked LoRA, export formats and a
# tiny end-to-end pipeline run on tests/fixtures/tiny-qwen2. CPU only, about half a minute.
#   PYTHON=/path/to/python tools/train/run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-/root/venv-fixtures/bin/python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
exec "$PYTHON" -m pytest -q -p no:cacheprovider tests "$@"
