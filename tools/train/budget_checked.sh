#!/usr/bin/env bash
# Budget RL from checked reasoning traces on SmolLM2-135M - the experiment of
# adapters/smollm2-135m/RESULTS.md, "Budget RL from checked traces" (not shipped).
#
#   tools/train/budget_checked.sh [--out DIR] [--stages "train eval table"] [--terse-frac F]
#                                 [--terse-style bare|labeled] [--ref-scale S]
#
# train: data.py's items with traces written as distilled reasoning is (the goal restated, prose
#        steps, a check worked backwards; --terse-frac of them terse, default 0.15, above 0 to keep
#        the items), a second SFT stage on them from the shipped adapters/smollm2-135m/reasoning,
#        (--terse-style labeled: each terse equation after its sentence's word and number,
#        `more 8: 9 + 8 = 17`), then GRPO: prompts that state no budget (75%) are
#        rewarded against each item's shortest complete reply (--unstated-budget ref; with
#        --ref-scale S the full reward ends at S times its length), the rest
#        state 40, 80 or 120 tokens; only boxed answers count (--require-box).
# eval:  `edgereason eval` rows on data.py's 40 held-out tasks and heldout.py's 56, --max-tokens 256
#        (the checked traces run to ~200 tokens), --parallel 8.
# table: results.py over each set.
# About 25 min of SFT and 45 min of GRPO on the 2-core CPU; ~30 min of evals on lavapipe.
# Environment: PYTHON (default ~/venv-train/bin/python), EDGEREASON (the engine binary),
# TRAIN_STAGES (the pipeline.sh stages of train, default "data sft grpo").
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$ROOT/runs/smollm2-135m/check" STAGES="train eval table" TERSE=0.15 TERSE_STYLE=bare REF=ref
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --stages) STAGES="$2"; shift 2 ;;
    --terse-frac) TERSE="$2"; shift 2 ;;
    --terse-style) TERSE_STYLE="$2"; shift 2 ;;
    --ref-scale) REF="ref:$2"; shift 2 ;;
    -h|--help) awk 'NR>1 && !/^#/ {exit} NR>1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
# data.py draws the terse choice from its item stream only when the share is above 0.
awk -v f="$TERSE" 'BEGIN { exit !(f > 0 && f < 1) }' \
  || { echo "--terse-frac $TERSE: expected a share in (0, 1) (0 would change data.py's items)" >&2; exit 2; }
PYTHON="${PYTHON:-$HOME/venv-train/bin/python}"
BIN="${EDGEREASON:-$ROOT/target/release/edgereason}"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release)
mkdir -p "$OUT"

if [[ " $STAGES " == *" train "* ]]; then
  GGUF="$("$BIN" pull smollm2-135m | tail -1)"
  # The same items and split as the shipped adapters' data (same seed; checks draw no numbers).
  export DATA_ARGS="--n-hard 1200 --n-easy 1200 --test-frac 0.1 --max-value 20 --terse-frac $TERSE --terse-style $TERSE_STYLE --check-frac 0.85"
  export SFT_ARGS="--init-adapter $ROOT/adapters/smollm2-135m/reasoning --difficulty hard --r 8 --alpha 16 --lr 5e-4 --warmup 0.05 --batch-size 8 --max-steps 80 --epochs 3 --max-len 320 --dtype f16 --log-every 5"
  export GRPO_ARGS="--difficulty all --budgets 40,80,120 --unstated-frac 0.75 --unstated-budget $REF --margin 0.3 --require-box --steps 50 --prompts-per-step 4 --group-size 8 --lr 2e-4 --beta 5e-3 --temperature 0.8 --save-every 10 --eval-n 0 --dtype f16 --curve $OUT/budget-grpo.csv"
  PYTHON="$PYTHON" "$HERE/pipeline.sh" --model "$GGUF" --fake-quant-int4 --seed 1 --out "$OUT" --stages "${TRAIN_STAGES:-data sft grpo}"
fi

if [[ " $STAGES " == *" eval "* ]]; then
  "$PYTHON" "$HERE/eval_set.py" "$OUT/data/test.jsonl" "$OUT/data/eval.jsonl"  # 24 hard + 16 easy
  "$PYTHON" "$HERE/heldout.py" --out "$OUT/data/heldout.jsonl" --seed 7
  mkdir -p "$OUT/eval" "$OUT/eval-heldout"
  ev() {  # ev NAME FLAGS...: one row of both tables (kept if already measured)
    local name="$1"; shift
    for set in eval eval-heldout; do
      local tasks="$OUT/data/eval.jsonl"
      [ "$set" = eval-heldout ] && tasks="$OUT/data/heldout.jsonl"
      [ -s "$OUT/$set/$name.json" ] && continue
      echo "== $set $name: $*"
      "$BIN" eval --model smollm2-135m --tasks "$tasks" --max-tokens 256 --parallel 8 --json "$@" \
        > "$OUT/$set/$name.json.part" 2> "$OUT/$set/$name.log"
      mv "$OUT/$set/$name.json.part" "$OUT/$set/$name.json"
      tail -1 "$OUT/$set/$name.log"
    done
  }
  R="$OUT/reasoning" RB="$OUT/reasoning-budget"
  ev sft --reasoning on --adapter "$R"
  ev budget --reasoning on --adapter "$RB"  # the target: no budget stated, none forced
  ev sft-cap40 --reasoning on --adapter "$R" --budget 40 --state-budget
  for b in 40 80 120; do
    ev budget$b --reasoning on --adapter "$RB" --budget $b --state-budget
  done
  ev base --reasoning off
fi

if [[ " $STAGES " == *" table "* ]]; then
  { echo "### data.py's test split"; echo
    "$PYTHON" "$HERE/results.py" "$OUT/eval"; echo
    echo "### heldout.py (independent problems, never trained on)"; echo
    "$PYTHON" "$HERE/results.py" "$OUT/eval-heldout"; } | tee "$OUT/results.md"
fi
