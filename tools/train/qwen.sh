#!/usr/bin/env bash
# The Qwen2.5-Coder-0.5B recipe: how adapters/qwen2.5-coder-0.5b/ was made and measured, sized
# for the 2-core CPU dev machine (a stage per step; each writes into OUT and can be rerun alone).
#
#   tools/train/qwen.sh [--out DIR] [--stages "data sft sft2 switcher verifier eval"] [--ship]
#
#   data      runs data.py twice: numbers <= 20 (stage one, as first trained) and numbers to
#             3 digits (stage two); heldout.py's independent sets (seed 7: 40 hard + 16 easy;
#             seed 8: 100 more hard), which no stage trains on
#   sft       masked-LoRA SFT on the int4-fake-quantized GGUF: a 100-step schedule stopped at
#             step 50 (what shipped first; ~25 s a step here)
#   sft2      stage two from sft's adapter on the 3-digit data, 120 steps (~45 min; the shipped run
#             started from stage one's f16 copy, this from its f32 output)
#   switcher  the switcher head on 400 hard + 400 easy training prompts (base-model features)
#   verifier  candidates sampled by the engine (eval --best-of 4 with stage two's adapter on the
#             first 100 items of the 3-digit data's test split), features and the probe by PyTorch
#   eval      every figure of RESULTS.md: base and adapter on both independent sets, routing,
#             best-of-8 with the verifier (about 1 h on lavapipe; Mesa 26 via
#             tools/coop_lavapipe.sh is ~2x faster: EDGEREASON_WRAP=tools/coop_lavapipe.sh)
#   --ship    copy reasoning/ (f16), switcher and verifier into adapters/qwen2.5-coder-0.5b/
#
# Environment: PYTHON (default ~/venv-train/bin/python: torch, transformers, peft, accelerate,
# gguf), EDGEREASON (engine binary, default target/release/edgereason).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
MODEL=qwen2.5-coder-0.5b OUT="" STAGES="data sft sft2 switcher verifier eval" SHIP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --stages) STAGES="$2"; shift 2 ;;
    --ship) SHIP=1; shift ;;
    -h|--help) awk 'NR>1 && !/^#/ {exit} NR>1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$ROOT/runs/$MODEL}"
PYTHON="${PYTHON:-$HOME/venv-train/bin/python}"
BIN="${EDGEREASON:-$ROOT/target/release/edgereason}"
WRAP="${EDGEREASON_WRAP:-}"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release)
mkdir -p "$OUT/logs" "$OUT/eval"
has() { [[ " $STAGES " == *" $1 "* ]]; }
GGUF="$("$BIN" pull "$MODEL" | tail -1)"
BASE=(--model "$GGUF" --fake-quant-int4)
# shellcheck disable=SC2086  # WRAP is empty or one command
engine() { $WRAP "$BIN" "$@"; }

if has data; then
  "$PYTHON" "$HERE/data.py" --style mixed --n-hard 3000 --n-easy 1200 --max-value 20 --terse-frac 0.3 \
    --seed 1 --out "$OUT/data"
  "$PYTHON" "$HERE/data.py" --style mixed --n-hard 3000 --n-easy 0 --terse-frac 0.3 --seed 2 \
    --out "$OUT/data999"
  "$PYTHON" "$HERE/heldout.py" --out "$OUT/data/heldout.jsonl" --seed 7
  "$PYTHON" "$HERE/heldout.py" --out "$OUT/data/heldout-hard100.jsonl" --n-hard 100 --n-easy 0 --seed 8
fi

SFT=(--difficulty hard --r 16 --alpha 32 --batch-size 2 --grad-accum 4 --max-len 256
     --gradient-checkpointing --log-every 5)
if has sft; then
  "$PYTHON" "$HERE/sft.py" "${BASE[@]}" "${SFT[@]}" --data "$OUT/data/train.jsonl" --lr 5e-4 \
    --max-steps 100 --stop-at 50 --seed 1 --out "$OUT/sft1" 2>&1 | tee "$OUT/logs/sft1.log"
fi
if has sft2; then
  "$PYTHON" "$HERE/sft.py" "${BASE[@]}" "${SFT[@]}" --data "$OUT/data999/train.jsonl" --lr 3e-4 \
    --warmup 0.05 --max-steps 120 --save-every 20 --init-adapter "$OUT/sft1" --seed 2 --dtype f16 \
    --out "$OUT/reasoning" 2>&1 | tee "$OUT/logs/sft2.log"
fi

if has switcher; then
  "$PYTHON" - "$OUT/data/train.jsonl" "$OUT/data/switcher-train.jsonl" <<'EOF'
import json, random, sys
items = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rng = random.Random(3)
pick = [i for d in ("hard", "easy") for i in rng.sample([i for i in items if i["difficulty"] == d], 400)]
with open(sys.argv[2], "w") as f:
    f.writelines(json.dumps(i) + "\n" for i in pick)
EOF
  "$PYTHON" "$HERE/switcher.py" "${BASE[@]}" --seed 1 --data "$OUT/data/switcher-train.jsonl" \
    --test-data "$OUT/data/heldout.jsonl" --out "$OUT/switcher.safetensors" 2>&1 | tee "$OUT/logs/switcher.log"
fi

if has verifier; then
  # prompts stage two never trained on: its data's test split (hard items only, 3-digit numbers)
  head -100 "$OUT/data999/test.jsonl" > "$OUT/data/verifier-prompts.jsonl"
  engine eval --model "$MODEL" --tasks "$OUT/data/verifier-prompts.jsonl" --reasoning on \
    --adapter "$OUT/reasoning" --best-of 4 --max-tokens 192 --parallel 8 --seed 11 --json \
    > "$OUT/candidates.json" 2> "$OUT/logs/candidates.log"
  "$PYTHON" "$HERE/verifier.py" "${BASE[@]}" --adapter "$OUT/reasoning" --candidates "$OUT/candidates.json" \
    --features "$OUT/features.npz" --val-frac 0 --weight-decay 0.3 1 3 10 30 --seed 1 \
    --out "$OUT/verifier.safetensors" 2>&1 | tee "$OUT/logs/verifier.log"
fi

if has eval; then
  ev() {  # ev NAME TASKS FLAGS...: one report in eval/
    local name="$1" tasks="$2"; shift 2
    echo "== $name: $*"
    engine eval --model "$MODEL" --tasks "$tasks" --json "$@" > "$OUT/eval/$name.json" 2> "$OUT/eval/$name.log"
    tail -1 "$OUT/eval/$name.log"
  }
  H7="$OUT/data/heldout.jsonl" H8="$OUT/data/heldout-hard100.jsonl" R=(--adapter "$OUT/reasoning")
  G=(--max-tokens 192 --parallel 8)  # greedy, 192 tokens, 8 tasks at once
  ev base "$H7" "${G[@]}" --reasoning off
  ev sft "$H7" "${G[@]}" --reasoning on "${R[@]}"
  ev base-hard100 "$H8" "${G[@]}" --reasoning off
  ev sft-hard100 "$H8" "${G[@]}" --reasoning on "${R[@]}"
  ev routing "$H7" --max-tokens 1 --parallel 8 --reasoning auto --switcher "$OUT/switcher.safetensors" "${R[@]}"
  # one 8-stream run gives every k <= 8: the first k streams of it are a k-stream run
  ev best8 "$H7" --limit 40 --max-tokens 192 --parallel 4 --reasoning on "${R[@]}" --best-of 8 \
    --verifier "$OUT/verifier.safetensors" --vote weighted
fi

if [ "$SHIP" = 1 ]; then
  DEST="$ROOT/adapters/$MODEL"
  mkdir -p "$DEST/reasoning"
  cp "$OUT/reasoning/adapter_config.json" "$OUT/reasoning/adapter_model.safetensors" "$DEST/reasoning/"
  cp "$OUT/switcher.safetensors" "$OUT/verifier.safetensors" "$DEST/"
  echo "shipped -> $DEST"
fi
