#!/usr/bin/env bash
# Builds llama.cpp's `llama-bench` with its Vulkan backend (the peer for tools/gpu_check.sh
# and, on lavapipe, for a same-device comparison) from the llama.cpp sources inside the
# llama-cpp-python sdist that tools/requirements-bench.txt pins (PyPI is reachable here,
# GitHub is not). Static ggml, no OpenMP, AVX2 without -march=native (AMX segfaults on this
# machine). Needs root for glslc/libvulkan-dev. Output: $OUT_DIR/llama-bench (default .dev).
#   bash tools/build_llama_bench.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-.dev}"
VER=$(grep -m1 '^llama_cpp_python==' tools/requirements-bench.txt | cut -d= -f3)
WORK=${LLAMA_BUILD_DIR:-/tmp/llama-bench-build}
PY=${PYTHON:-python3}
apt-get install -y -qq glslc libvulkan-dev spirv-headers >/dev/null
mkdir -p "$WORK" "$OUT_DIR"
if [ ! -x "$WORK/venv/bin/cmake" ]; then
  "$PY" -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q cmake==4.4.5
fi
SRC="$WORK/llama_cpp_python-$VER/vendor/llama.cpp"
if [ ! -d "$SRC" ]; then
  # Only the source archive: --no-binary for this package alone (its build deps stay wheels).
  (cd "$WORK" && "$WORK/venv/bin/pip" download -q "llama-cpp-python==$VER" --no-deps --no-binary llama-cpp-python)
  tar -xzf "$WORK/llama_cpp_python-$VER.tar.gz" -C "$WORK"
fi
# Debian 12's Vulkan headers (1.3.239) lack VK_EXT_layer_settings, which ggml-vulkan uses.
if [ ! -f "$WORK/vk/root/usr/include/vulkan/vulkan.hpp" ]; then
  bash tools/sid_download.sh "$WORK/vk" libvulkan-dev
  dpkg -x "$WORK"/vk/debs/libvulkan-dev_*.deb "$WORK/vk/root"
fi
"$WORK/venv/bin/cmake" -S "$SRC" -B "$SRC/build" -DVulkan_INCLUDE_DIR="$WORK/vk/root/usr/include" -DGGML_VULKAN=ON -DGGML_NATIVE=OFF -DGGML_AVX2=ON \
  -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
nice -n 10 "$WORK/venv/bin/cmake" --build "$SRC/build" --target llama-bench -j "$(nproc)"
cp "$SRC/build/bin/llama-bench" "$OUT_DIR/llama-bench"
strip "$OUT_DIR/llama-bench"
ls -la "$OUT_DIR/llama-bench"
