#!/usr/bin/env bash
# The real demonstration: train the reasoning adapter, its budget-forced version, the switcher and
# the verifier on a real model, then measure every row of the results table through the engine
# (`edgereason eval`) on the held-out split.
#
#   tools/train/demo.sh [--model smollm2-135m] [--out DIR] [--stages "train eval table"] [--ship]
#
#   --model   a pull name (edgereason pull --list); default smollm2-135m. qwen2.5-coder-0.5b runs
#             tools/train/qwen.sh, that model's recipe (its own --stages; --out and --ship as here)
#   --out     run directory (default runs/<model>); training writes the pipeline.sh layout there,
#             evaluation writes eval/*.json, table writes results.md
#   --stages  any of train, eval, table (default all three, in that order)
#   --ship    copy reasoning/, reasoning-budget/, switcher.safetensors, verifier.safetensors into
#             adapters/<model>/, where `edgereason run --reasoning auto` finds them by default
#
# The settings below are the ones the shipped SmolLM2-135M artifacts were made with, sized for a
# 2-core CPU (training ~1.5 h, evaluation ~1 h on lavapipe). Environment: PYTHON as pipeline.sh;
# EDGEREASON (the engine binary, default target/release/edgereason, built if missing);
# EVAL_ARGS extra flags for every eval (e.g. --device gl).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
MODEL=smollm2-135m OUT="" STAGES="train eval table" SHIP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --stages) STAGES="$2"; shift 2 ;;
    --ship) SHIP=1; shift ;;
    -h|--help) awk 'NR>1 && !/^#/ {exit} NR>1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$MODEL" = qwen2.5-coder-0.5b ]; then
  args=()
  [ -n "$OUT" ] && args+=(--out "$OUT")
  [ "$STAGES" != "train eval table" ] && args+=(--stages "$STAGES")
  [ "$SHIP" = 1 ] && args+=(--ship)
  exec "$HERE/qwen.sh" "${args[@]}"
fi
OUT="${OUT:-$ROOT/runs/$MODEL}"
PYTHON="${PYTHON:-/root/venv-fixtures/bin/python}"
BIN="${EDGEREASON:-$ROOT/target/release/edgereason}"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release)
mkdir -p "$OUT"

# Budget buckets: SFT traces are ~55 (terse) to ~90 (verbose) tokens; 40 asks for about half.
BUDGETS=40,120
LOW=40 HIGH=120

if [[ " $STAGES " == *" train "* ]]; then
  GGUF="$("$BIN" pull "$MODEL" | tail -1)"
  # Numbers stay <= 20: a 135M model cannot do two-digit arithmetic reliably, and the point is
  # to measure reasoning, not its multiplication table. Half the traces are terse.
  export DATA_ARGS="--n-hard 1200 --n-easy 1200 --test-frac 0.1 --max-value 20 --terse-frac 0.5"
  export SFT_ARGS="--difficulty hard --r 8 --alpha 16 --lr 1e-3 --batch-size 8 --max-steps 150 --epochs 3 --max-len 256 --dtype f16 --log-every 5"
  export GRPO_ARGS="--budgets $BUDGETS --steps 20 --prompts-per-step 4 --group-size 8 --lr 1e-4 --beta 1e-3 --temperature 0.8 --eval-n 8 --dtype f16"
  export VERIFIER_ARGS="--n-prompts 100 --samples 4 --max-new-tokens 160"
  PYTHON="$PYTHON" "$HERE/pipeline.sh" --model "$GGUF" --fake-quant-int4 --seed 1 --out "$OUT"
fi

if [[ " $STAGES " == *" eval "* ]]; then
  # 24 hard + 16 easy held-out tasks, the first of each in test.jsonl's order
  "$PYTHON" "$HERE/eval_set.py" "$OUT/data/test.jsonl" "$OUT/data/eval.jsonl"
  # The second held-out set: heldout.py's independent problems (40 hard, 16 easy), which no
  # training stage reads. Every row is measured on both sets.
  "$PYTHON" "$HERE/heldout.py" --out "$OUT/data/heldout.jsonl" --seed 7
  mkdir -p "$OUT/eval" "$OUT/eval-heldout"
  ev() {  # ev NAME FLAGS...: one row of both tables
    local name="$1"; shift
    for set in eval eval-heldout; do
      local tasks="$OUT/data/eval.jsonl"
      [ "$set" = eval-heldout ] && tasks="$OUT/data/heldout.jsonl"
      echo "== $set $name: $*"
      # shellcheck disable=SC2086  # EVAL_ARGS is word-split on purpose
      "$BIN" eval --model "$MODEL" --tasks "$tasks" --max-tokens 192 --json ${EVAL_ARGS:-} "$@" \
        > "$OUT/$set/$name.json" 2> "$OUT/$set/$name.log"
      tail -1 "$OUT/$set/$name.log"
    done
  }
  R="$OUT/reasoning" RB="$OUT/reasoning-budget"
  ev base --reasoning off
  ev sft --reasoning on --adapter "$R"
  ev sft-cap$LOW --reasoning on --adapter "$R" --budget $LOW --state-budget
  ev budget$LOW --reasoning on --adapter "$RB" --budget $LOW --state-budget
  ev budget$HIGH --reasoning on --adapter "$RB" --budget $HIGH --state-budget
  ev auto --reasoning auto --adapter "$R" --switcher "$OUT/switcher.safetensors"
  # best-of-8 on the 24 hard tasks (eval.jsonl lists them first): one run gives the votes over
  # the first 1, 2, 4 and 8 streams, majority and verifier-weighted
  ev best8 --limit 24 --reasoning on --adapter "$R" --best-of 8 --temperature 0.8 --seed 1 \
    --verifier "$OUT/verifier.safetensors" --vote weighted
fi

if [[ " $STAGES " == *" table "* ]]; then
  { echo "### Held-out set 1: data.py's test split"; echo
    "$PYTHON" "$HERE/results.py" "$OUT/eval"; echo
    echo "### Held-out set 2: heldout.py (independent problems, never trained on)"; echo
    "$PYTHON" "$HERE/results.py" "$OUT/eval-heldout"; } | tee "$OUT/results.md"
fi

if [ "$SHIP" = 1 ]; then
  DEST="$ROOT/adapters/$MODEL"
  mkdir -p "$DEST"
  for d in reasoning reasoning-budget; do
    rm -rf "${DEST:?}/$d" && mkdir -p "$DEST/$d"
    cp "$OUT/$d/adapter_config.json" "$OUT/$d/adapter_model.safetensors" "$DEST/$d/"
  done
  cp "$OUT/switcher.safetensors" "$OUT/verifier.safetensors" "$DEST/"
  [ -f "$OUT/results.md" ] && cp "$OUT/results.md" "$DEST/RESULTS.md"
  echo "shipped -> $DEST"
fi
