#!/usr/bin/env bash
# The whole training pipeline on one base model: data -> SFT -> budget-forced GRPO -> switcher -> verifier.
#
#   tools/train/pipeline.sh --model BASE --out DIR [--tiny] [--fake-quant-int4] [--seed N] [--stages LIST]
#
#   BASE  an HF directory or a .gguf file (transformers dequantizes it)
#   DIR   gets data/{train,test}.jsonl, reasoning/ (the SFT adapter), reasoning-budget/ (its budget-forced
#         GRPO version), switcher.safetensors, verifier.safetensors (trained on reasoning/'s candidates), and
#         one log per stage in logs/ - the layout of adapters/<model>/, which the engine loads by default
#   --stages  which stages run, in their fixed order (default "data sft grpo switcher verifier"); a
#           later stage reads what the earlier ones left in DIR
#   --tiny  a smoke run (few items, few steps) that finishes in about a minute on one CPU; for
#           tests/fixtures/tiny-qwen2. GRPO then uses --no-correctness (a random model never answers
#           correctly, so every group would be skipped and the update path never run).
#
# Environment:
#   PYTHON  interpreter (default /root/venv-fixtures/bin/python)
#   LAUNCH  how each stage is started (default "$PYTHON"); e.g. LAUNCH="accelerate launch --num_processes 8"
#           for data-parallel runs - the scripts are the same under accelerate.
#   SFT_ARGS, GRPO_ARGS, SWITCHER_ARGS, VERIFIER_ARGS, DATA_ARGS  extra flags appended to each stage
#           (they override the defaults below; see each script's --help)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-/root/venv-fixtures/bin/python}"
LAUNCH="${LAUNCH:-$PYTHON}"
MODEL="" OUT="" TINY=0 FQ="" SEED=0 STAGES="data sft grpo switcher verifier"
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --fake-quant-int4) FQ="--fake-quant-int4"; shift ;;
    --seed) SEED="$2"; shift 2 ;;
    --stages) STAGES="$2"; shift 2 ;;
    -h|--help) awk 'NR>1 && !/^#/ {exit} NR>1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$MODEL" ] && [ -n "$OUT" ] || { echo "need --model and --out (see --help)" >&2; exit 2; }
mkdir -p "$OUT/logs"
COMMON=(--model "$MODEL" --seed "$SEED" $FQ)

if [ "$TINY" = 1 ]; then
  DATA_D=(--n-hard 40 --n-easy 40 --test-frac 0.2)
  SFT_D=(--epochs 1 --batch-size 8 --max-steps 6 --log-every 2)
  GRPO_D=(--steps 2 --prompts-per-step 2 --group-size 4 --budgets 16,32 --difficulty all --no-correctness
          --eval-n 4 --lr 1e-3)
  SW_D=(--epochs 50)
  VER_D=(--n-prompts 4 --samples 2 --max-new-tokens 48 --epochs 50)
else
  DATA_D=() SFT_D=() GRPO_D=() SW_D=() VER_D=()
fi

for s in $STAGES; do
  case " data sft grpo switcher verifier " in *" $s "*) ;; *) echo "unknown stage: $s" >&2; exit 2 ;; esac
done

stage() {  # stage NAME CMD...: run (if NAME is in --stages), tee to logs/NAME.log, time it
  local name="$1"; shift
  [[ " $STAGES " == *" $name "* ]] || return 0
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$OUT/logs/$name.log"
  echo "== $name done in $((SECONDS - t0))s"
}

# shellcheck disable=SC2086  # the *_ARGS variables are word-split on purpose
stage data "$PYTHON" "$HERE/data.py" --out "$OUT/data" --seed "$SEED" "${DATA_D[@]}" ${DATA_ARGS:-}
stage sft $LAUNCH "$HERE/sft.py" "${COMMON[@]}" --data "$OUT/data/train.jsonl" --eval-data "$OUT/data/test.jsonl" \
  --out "$OUT/reasoning" "${SFT_D[@]}" ${SFT_ARGS:-}
stage grpo $LAUNCH "$HERE/grpo.py" "${COMMON[@]}" --adapter "$OUT/reasoning" --data "$OUT/data/train.jsonl" \
  --eval-data "$OUT/data/test.jsonl" --out "$OUT/reasoning-budget" "${GRPO_D[@]}" ${GRPO_ARGS:-}
stage switcher $LAUNCH "$HERE/switcher.py" "${COMMON[@]}" --data "$OUT/data/train.jsonl" \
  --test-data "$OUT/data/test.jsonl" --out "$OUT/switcher.safetensors" "${SW_D[@]}" ${SWITCHER_ARGS:-}
stage verifier $LAUNCH "$HERE/verifier.py" "${COMMON[@]}" --adapter "$OUT/reasoning" --data "$OUT/data/train.jsonl" \
  --out "$OUT/verifier.safetensors" "${VER_D[@]}" ${VERIFIER_ARGS:-}
echo "pipeline done: $OUT (reasoning adapter: $OUT/reasoning, budget-forced: $OUT/reasoning-budget)"
