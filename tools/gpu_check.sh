#!/usr/bin/env bash
# One-shot check of the engine on a lent GPU machine (no Rust, no network there): the
# release binary and two test binaries are built here, stripped into .dev/, and carried
# with .gl/ (libvulkan + GL loaders). Prints devices, runs the kernel and forward tests on
# the GPU, and benches synthetic models of the real shapes. Output lands in $OUT.
set -u
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
if ls .gl/*.deb >/dev/null 2>&1 && ! ldconfig -p | grep -q libvulkan.so.1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
fi
nvidia-smi -L 2>&1 | head -2
B=.dev/edgereason
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && ! $B devices 2>/dev/null | grep -qi nvidia; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
$B devices 2>&1 | grep -v XDG | tee "$OUT/devices.txt"
# The test binaries read fixtures from the path they were built at.
[ -d /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
.dev/kernels 2>&1 | grep -E "^test |test result|panicked" | tee "$OUT/kernels.txt"
.dev/forward 2>&1 | grep -E "^test |test result|panicked|worst" | tee "$OUT/forward.txt"
for m in qwen2.5-0.5b smollm2-135m; do
  for opt in "" --int4-only; do
    timeout 120 $B bench --model synthetic:$m $opt --prompt-tokens 512 --gen-tokens 128 --json > "$OUT/bench-$m$opt.json" 2>"$OUT/bench-$m$opt.err"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1], r['device'], 'prefill %.0f tok/s decode %.1f tok/s step %.2f ms gemv %.1f GB/s read %.1f GB/s' % (r['prefill_tokens_per_s'], r['decode_tokens_per_s'], r['decode_step_ms'], r['gemv']['gemv_gb_per_s'], r['gemv']['read_gb_per_s']))" "$OUT/bench-$m$opt.json" || tail -3 "$OUT/bench-$m$opt.err"
  done
done
