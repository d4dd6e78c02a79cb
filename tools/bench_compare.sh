#!/usr/bin/env bash
# One run, same machine: llama.cpp's CPU backend (2 threads, via llama-cpp-python in
# /root/venv-llamacpp, see requirements-bench.txt) and `edgereason bench` on both real
# models, 128-token prompt, 32 generated tokens. Prints both tables.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin edgereason -q
PY=${LLAMACPP_PY:-/root/venv-llamacpp/bin/python}
if [ -x "$PY" ]; then "$PY" tools/bench_llamacpp.py --threads 2 --prompt-tokens 128 --decode-tokens 32; else echo "llama-cpp-python not installed at $PY: skipping the baseline"; fi
for m in smollm2-135m qwen2.5-0.5b; do
  ./target/release/edgereason bench --model "$m" --prompt-tokens 128 --gen-tokens 32 2>&1 | grep -v XDG_RUNTIME
done
