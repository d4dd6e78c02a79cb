#!/usr/bin/env bash
# One-shot check of the engine on a lent GPU machine (no Rust, no network there): the
# release binary and the test binaries are built here, stripped into .dev/, and carried
# with .gl/ (libvulkan + GL loaders). Prints devices, runs the kernel, forward, best-of-N
# and adapter tests on the GPU through Vulkan, and benches synthetic models of the real
# shapes (decode/prefill, N streams, shared-prefix attention, LoRA ranks, adapter TTFT).
# Output lands in $OUT.
set -u
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
if ls .gl/*.deb >/dev/null 2>&1 && ! ldconfig -p | grep -q libvulkan.so.1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
fi
nvidia-smi -L 2>&1 | head -2
# GL through NVIDIA's EGL hung in the kernel tests once: Vulkan only.
export WGPU_BACKEND=vulkan
B=.dev/edgereason
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && ! $B devices 2>/dev/null | grep -qi nvidia; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
$B devices 2>&1 | grep -v XDG | tee "$OUT/devices.txt"
# The test binaries read fixtures from the path they were built at.
[ -d /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
for t in kernels forward best_of_n adapters; do
  timeout 120 .dev/$t --test-threads 1 2>&1 | grep -E "^test |test result|panicked|worst" | tee "$OUT/test-$t.txt"
done
Q=synthetic:qwen2.5-0.5b
run() { local name=$1; shift; echo "== $name: $*" | tee -a "$OUT/bench.txt"; timeout 150 "$@" 2>"$OUT/$name.err" | tee -a "$OUT/bench.txt"; }
run bench-qwen $B bench --model $Q --prompt-tokens 512 --gen-tokens 128
run bench-smollm2 $B bench --model synthetic:smollm2-135m --prompt-tokens 512 --gen-tokens 128
run attention $B bench --model $Q --attention 8 --prompt-tokens 2048 --gen-tokens 64 --ctx 4096
run streams $B bench --model $Q --streams 1,2,4,8,16 --prompt-tokens 512 --gen-tokens 64
EDGEREASON_SHARED_PREFIX=0 run streams-noprefix $B bench --model $Q --streams 1,8,16 --prompt-tokens 2048 --gen-tokens 32 --ctx 8192
run streams-2048 $B bench --model $Q --streams 1,8,16 --prompt-tokens 2048 --gen-tokens 32 --ctx 8192
run lora $B bench --model $Q --lora-ranks 8,16,64,128 --prompt-tokens 512 --gen-tokens 64
run ttft $B bench --model $Q --adapter-ttft --prompt-tokens 512
