#!/usr/bin/env bash
# Fuzz every loader (fuzz/fuzz_targets: GGUF, HF directory, PEFT adapter, switcher/verifier
# heads, pre-quantized file, chat template) for SECS seconds each (default 600), JOBS at a
# time (default 2), starting from fuzz/regressions/<target>/. Needs the nightly toolchain
# and cargo-fuzz (`cargo install cargo-fuzz`). A crasher lands in fuzz/artifacts/<target>/:
# fix it, then copy it into fuzz/regressions/<target>/ so tests/fuzz_replay.rs replays it.
#   bash tools/fuzz.sh [SECS] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS="${1:-600}"
JOBS="${2:-2}"
TARGETS=(gguf hf_dir peft heads prequant chat_template)
cargo +nightly fuzz build -O 2>&1 | tail -3
run() {
  local t=$1
  mkdir -p "corpus/$t" "logs"
  cp -n "regressions/$t/"* "corpus/$t/" 2>/dev/null || true
  # -rss_limit_mb: a crafted header must not make a loader allocate gigabytes.
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -timeout=20 -max_len=600000 -print_final_stats=1 >"logs/$t.log" 2>&1 \
    && echo "$t: no crash in ${SECS}s ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$') runs)" \
    || echo "$t: FAILED, see fuzz/logs/$t.log and fuzz/artifacts/$t/"
}
for t in "${TARGETS[@]}"; do
  while [ "$(jobs -r | wc -l)" -ge "$JOBS" ]; do sleep 1; done
  run "$t" &
done
wait
