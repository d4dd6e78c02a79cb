#!/usr/bin/env bash
# llama.cpp's Vulkan backend and edgereason on the same device and the same weights file, in
# one run: `quantize` writes a synthetic model (a registry model's shapes and formats, random
# weights) as GGUF, llama-bench (tools/build_llama_bench.sh) and `edgereason bench` read it.
# On this machine the device is lavapipe, on Debian 12's Mesa and, where
# tools/coop_lavapipe.sh can unpack it, Debian unstable's; tools/gpu_check.sh does the same on
# a GPU. GGML_VK_VISIBLE_DEVICES=0: ggml skips CPU devices unless asked.
#   bash tools/bench_vulkan_peer.sh [MODEL] [PROMPT] [GEN]   (default qwen2.5-0.5b 128 32)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-qwen2.5-0.5b} P=${2:-128} N=${3:-32}
LB=${LLAMA_BENCH:-.dev/llama-bench}
[ -x "$LB" ] || bash tools/build_llama_bench.sh "$(dirname "$LB")"
cargo build --release -q --bin edgereason
F=${TMPDIR:-/tmp}/$MODEL-random.gguf
./target/release/edgereason quantize "synthetic:$MODEL" "$F"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} GGML_VK_VISIBLE_DEVICES=0
for mesa in system unstable; do
  W=()
  if [ $mesa = unstable ]; then
    bash tools/coop_lavapipe.sh --setup >/dev/null 2>&1 || { echo "(no Debian unstable Mesa)"; break; }
    W=(bash tools/coop_lavapipe.sh)
  fi
  echo "== $mesa Mesa: llama-bench (Vulkan) -p $P -n $N -ngl 99 -r 2"
  "${W[@]}" "$LB" -m "$F" -p "$P" -n "$N" -ngl 99 -r 2 2>&1 | grep -E "\| *(pp|tg)[0-9]+ *\|"
  echo "== $mesa Mesa: edgereason bench --prompt-tokens $P --gen-tokens $N"
  "${W[@]}" ./target/release/edgereason bench --model "$F" --prompt-tokens "$P" --gen-tokens "$N" 2>&1 \
    | grep -E "^(prefill|decode) +[0-9]"
done
