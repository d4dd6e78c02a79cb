#!/usr/bin/env bash
# One-shot check of the engine on a lent GPU machine (no Rust, no network there): the
# release binary and the test binaries are built here, stripped into .dev/, and carried
# with .gl/ (libvulkan + the glvnd libraries NVIDIA's Vulkan driver links against). Prints
# devices, benches synthetic models of the real shapes beside llama.cpp's llama-bench on one
# GGUF (decode/prefill, the A/B runs behind each per-device default, N streams, LoRA,
# adapter TTFT, the server), then runs the kernel, sampling, forward, best-of-N and adapter
# tests on the GPU through Vulkan. Output lands in $OUT (at most 8 files: what a device
# call brings back).
#
# Here (the CPU machine): `bash tools/gpu_check.sh --prepare` builds and strips what to carry.
# Then, with the device tool: run `DEADLINE=280 bash tools/gpu_check.sh` with carry
# [".dev", ".gl"] (~3 min on an H200: DEADLINE caps the benches' seconds, TEST_SECONDS the
# tests'); `ONLY="bench-qwen streams tests"` runs just those.
set -u
if [ "${1:-}" = --prepare ]; then
  set -e
  cargo build --release --bin edgereason
  rm -rf .dev && mkdir -p .dev/bin .gl
  cp target/release/edgereason .dev/bin/ && strip .dev/bin/edgereason
  for t in kernels sampling forward best_of_n adapters; do
    bin=$(bash tools/test_bin.sh $t)
    cp "$bin" .dev/bin/$t && strip .dev/bin/$t
  done
  # The peer: llama.cpp's llama-bench with its Vulkan backend (tools/build_llama_bench.sh).
  bash tools/build_llama_bench.sh .dev/bin
  # Seven stripped binaries are ~100 MB; a device call carries 64 MiB in all: compress.
  tar -cJf .dev/bins.tar.xz -C .dev/bin . && rm -r .dev/bin
  # The Vulkan loader and the glvnd libraries NVIDIA's ICD links against (amd64, whatever
  # this machine is).
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  mkdir -p /tmp/amd64/partial && apt-get $o update -qq
  (cd .gl && apt-get $o download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null 2>&1)
  du -sh .dev .gl
  exit 0
fi
[ -f .dev/bins.tar.xz ] && tar -xJf .dev/bins.tar.xz -C .dev
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
# NVIDIA's Vulkan ICD (libGLX_nvidia) needs the glvnd libraries beside the loader: all of
# .gl's packages are unpacked (--prepare downloads them), whatever the image has.
if ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
fi
nvidia-smi -L 2>&1 | head -2
# GL through NVIDIA's EGL hung in the kernel tests once: Vulkan only.
export WGPU_BACKEND=vulkan
B=.dev/edgereason
icd=$(ls /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd*.json /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json 2>/dev/null | head -1)
if [ -n "$icd" ] && ! $B devices 2>/dev/null | grep -qi nvidia; then
  export VK_DRIVER_FILES=$icd
fi
if ! $B devices 2>/dev/null | grep -qi nvidia; then
  echo "gpu_check: no NVIDIA adapter through Vulkan (ICD: ${icd:-none}); loader errors:"
  VK_LOADER_DEBUG=error $B devices 2>&1 | sort | uniq -c | head -5
  glx=$(ldconfig -p | grep -m1 'libGLX_nvidia.so.0' | awk '{print $NF}')
  echo "libGLX_nvidia: ${glx:-not in ldconfig}"; [ -n "$glx" ] && ldd "$glx" | grep -i "not found"
  exit 1
fi
$B devices 2>&1 | grep -v XDG | tee "$OUT/devices.txt"
# The test binaries read fixtures from the path they were built at.
[ -d /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
# A device call runs 10 minutes at most and the session's device time is short: the figures
# come first, most important first, each run capped by what is left of DEADLINE seconds
# (default 420), and the tests last, in parallel. At most 8 files come back from $OUT, so
# every run appends to bench.txt (stdout) and stderr.txt.
T0=$(date +%s); DEADLINE=${DEADLINE:-420}
left() { echo $((DEADLINE - ($(date +%s) - T0))); }
# ONLY="name ..." runs just those runs (and the tests only if it names "tests").
only() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
run() {
  only "$1" || return 0
  local name=$1; shift; local t; t=$(left); [ "$t" -gt 5 ] || { echo "== $name: skipped (deadline)" | tee -a "$OUT/bench.txt"; return; }
  [ "$t" -gt 150 ] && t=150
  echo "== $name (at $(( $(date +%s) - T0 )) s): $*" | tee -a "$OUT/bench.txt"
  echo "== $name" >>"$OUT/stderr.txt"
  timeout "$t" "$@" 2>>"$OUT/stderr.txt" | tee -a "$OUT/bench.txt"
}
Q=synthetic:qwen2.5-0.5b
# Issue 10 (3): the peer in the same run on the same weights file. `quantize` writes the
# synthetic model (Qwen2.5-0.5B's shapes and formats, random weights) as GGUF (int8 as
# Q8_0, int4 as Q4_1); llama-bench (Vulkan, all layers on the GPU) and `bench` both read it.
F=/tmp/qwen-random.gguf
$B quantize $Q $F 2>&1 | tail -1
run bench-qwen $B bench --model $F --prompt-tokens 512 --gen-tokens 128
# Decode pipelining (each step submitted fed the last one's draws before the host reads
# them; the default) against waiting for each step's draws, as before 2026-12-04's third
# session: the gap between GPU time and wall time per step.
EDGEREASON_PIPELINE=0 run decode-unpipelined $B bench --model $F --prompt-tokens 512 --gen-tokens 128
# Decode fixed cost, each choice against the default in the same run (the "decode" and
# "decode step" lines). First the splits inside the workgroup, which need no second
# launch: matmul k in slices (SLICES: 64 columns × S slices summed in workgroup memory)
# alone (EDGEREASON_K_SPLITS=0: 6 launches a layer), with one stream's attention keys in
# slices too (no merge launch: 5 a layer), or S slices taking S of the split policy's
# splits (the reduce stays where more are asked: the down projection) — `edgereason
# tune` times those candidates in alternating rounds, each trial's launches a layer
# beside it (--dry-run: later runs here keep the defaults); then a few more, and at 2048
# tokens. Then the step submitted in parts split at layers; split-K policies (workgroups
# aimed at, fewest 32-k groups per split); no split-K.
run tune bash -c "$B tune --model $F --prompt-tokens 512 --gen-tokens 64 --rounds 2 --dry-run 2>&1"
# Best-of-N scaling (one N-row step split by kernel per N), then the server (issue 12;
# the synthetic model has a word-level tokenizer and ChatML, and no EOS: every reply is
# full): with its kernel variants built while idle (the default since 2026-12-05), then
# built by the first step that needs each (--no-warm-up), as before; then the peer.
run streams $B bench --model $Q --streams 1,2,4,8,16 --prompt-tokens 512 --gen-tokens 64
# The shared-prefix pass against per-stream attention over the prompt's blocks (on the
# H200 the pass was the slower at N=8 over 2048 tokens; N=1 never takes it).
EDGEREASON_SHARED_PREFIX=0 run streams-no-prefix $B bench --model $Q --streams 1,2,8 --prompt-tokens 512 --gen-tokens 64
EDGEREASON_BIN=$B run serve timeout 100 python3 tools/bench_serve.py --model $Q --clients 1,8,1,8 --requests 2 --max-tokens 64
EDGEREASON_BIN=$B run serve-cold timeout 100 python3 tools/bench_serve.py --model $Q --clients 1,8,1,8 --requests 2 --max-tokens 64 --serve-arg=--no-warm-up
[ -x .dev/llama-bench ] && run llama-bench-vulkan .dev/llama-bench -m $F -p 512 -n 128 -ngl 99 -r 5
EDGEREASON_K_SPLITS=0 EDGEREASON_K_SLICES=16 run decode-slices-16-alone $B bench --model $F --prompt-tokens 512 --gen-tokens 128
EDGEREASON_K_SPLITS=0 EDGEREASON_K_SLICES=8 EDGEREASON_ATTENTION_SLICES=8 run decode-slices-8-att-8 $B bench --model $F --prompt-tokens 512 --gen-tokens 128
EDGEREASON_K_SPLITS=0 EDGEREASON_K_SLICES=8 EDGEREASON_ATTENTION_SLICES=8 run decode-slices-8-att-8-2048 $B bench --model $F --prompt-tokens 2048 --gen-tokens 64 --ctx 4096
run decode-2048 $B bench --model $F --prompt-tokens 2048 --gen-tokens 64 --ctx 4096
for parts in 2 4 8; do
  EDGEREASON_SUBMIT_PARTS=$parts run decode-parts-$parts $B bench --model $F --prompt-tokens 512 --gen-tokens 128
done
for policy in 4096:1 2048:2 4096:4 512:4; do
  EDGEREASON_SPLIT_TARGET=${policy%:*} EDGEREASON_SPLIT_MIN_GROUPS=${policy#*:} run decode-split-$policy $B bench --model $F --prompt-tokens 512 --gen-tokens 128
done
EDGEREASON_SUBMIT_PARTS=4 EDGEREASON_SPLIT_TARGET=4096 EDGEREASON_SPLIT_MIN_GROUPS=1 run decode-parts4-split4096:1 $B bench --model $F --prompt-tokens 512 --gen-tokens 128
EDGEREASON_K_SPLITS=0 run decode-no-ksplit $B bench --model $F --prompt-tokens 512 --gen-tokens 128
run bench-again $B bench --model $F --prompt-tokens 512 --gen-tokens 128
# LoRA decode: the shrink split over a workgroup (default on GPUs) against one invocation
# per dot product; the switcher's TTFT.
run lora $B bench --model $Q --lora-ranks 8,16,64 --prompt-tokens 512 --gen-tokens 64
EDGEREASON_LORA_SPLIT=0 run lora-serial $B bench --model $Q --lora-ranks 8,16 --prompt-tokens 512 --gen-tokens 64
run ttft $B bench --model $Q --adapter-ttft --prompt-tokens 512
EDGEREASON_PIPELINE=0 run streams-unpipelined $B bench --model $Q --streams 1,8 --prompt-tokens 512 --gen-tokens 64
EDGEREASON_PIPELINE=0 EDGEREASON_BIN=$B run serve-unpipelined timeout 100 python3 tools/bench_serve.py --model $Q --clients 1,8,1,8 --requests 2 --max-tokens 64
run bench-smollm2 $B bench --model synthetic:smollm2-135m --prompt-tokens 512 --gen-tokens 128
run bench-qwen-2048 $B bench --model $F --prompt-tokens 2048 --gen-tokens 8 --ctx 4096
EDGEREASON_PREFILL_COOP=1 run bench-qwen-coop $B bench --model $F --prompt-tokens 512 --gen-tokens 32
# The prefill GEMM tiles one process each: one of them lost the device (2026-12-04).
for tile in 1x1 2x2 4x2 4x4 8x4 8x8; do
  run prefill-matmul-$tile timeout 40 $B bench --model $Q --prefill-matmul 512 --gemm-tiles $tile --reps 3
done
# Correctness on the GPU, the test groups side by side (timings are done), one thread per
# group (two threads in the kernel group segfaulted in NVIDIA's driver once). With
# EDGEREASON_REQUIRE_COOP=1 the tensor-core prefill kernel's test fails, not skips, where
# wgpu offers the GPU no f16 cooperative matrices (`devices` lists them). The sampling
# group runs the CLI from the path it was built at.
only tests || { echo "gpu_check: $(( $(date +%s) - T0 )) s"; exit 0; }
mkdir -p target/release && cp $B target/release/edgereason
t=$(( $(left) + ${TEST_SECONDS:-120} )); [ "$t" -gt 240 ] && t=240
for g in kernels sampling forward best_of_n adapters; do
  (EDGEREASON_REQUIRE_COOP=1 timeout "$t" .dev/$g --test-threads 1 >"/tmp/test-$g.txt" 2>&1; echo "$g exit $?" >>"/tmp/test-$g.txt") &
done
(EDGEREASON_SUBMIT_PARTS=4 timeout "$t" .dev/forward --test-threads 1 >/tmp/test-forward-parts.txt 2>&1; echo "forward-parts exit $?" >>/tmp/test-forward-parts.txt) &
(EDGEREASON_K_SPLITS=0 EDGEREASON_K_SLICES=8 EDGEREASON_ATTENTION_SLICES=4 timeout "$t" .dev/forward --test-threads 1 >/tmp/test-forward-slices.txt 2>&1; echo "forward-slices exit $?" >>/tmp/test-forward-slices.txt) &
wait
for g in kernels sampling forward best_of_n adapters forward-parts forward-slices; do
  echo "## $g"; grep -E "^test |test result|panicked|worst| exit " "/tmp/test-$g.txt"
done >"$OUT/tests.txt"
# Failures in full (panic messages), at most 400 lines.
for g in kernels sampling forward best_of_n adapters forward-parts forward-slices; do
  grep -q "test result: ok" "/tmp/test-$g.txt" || { echo "## $g"; tail -n 80 "/tmp/test-$g.txt"; }
done | head -n 400 >"$OUT/failures.txt"
grep -E "test result|FAILED|panicked| exit " "$OUT/tests.txt"
echo "gpu_check: $(( $(date +%s) - T0 )) s"
