#!/usr/bin/env bash
# Runs a command on a lavapipe that has cooperative matrices (VK_KHR_cooperative_matrix:
# Mesa ≥ 25.1; Debian 12's Mesa 22 and its backports' 25.0 have none), so the tensor-core
# prefill kernel is tested on a CPU machine. Mesa comes from Debian unstable with the C
# library it was built against, unpacked under $COOP_ROOT (default /opt/coop-lavapipe; the
# system's packages are not touched), and the command runs through that C library's
# loader: `tools/coop_lavapipe.sh target/release/edgereason devices`.
# `tools/coop_lavapipe.sh --setup` only unpacks (idempotent; exit 1 when it cannot).
set -euo pipefail
ROOT=${COOP_ROOT:-/opt/coop-lavapipe}
LIB=$ROOT/usr/lib/x86_64-linux-gnu
setup() {
  [ -f "$ROOT/lvp.json" ] && return 0
  local d; d=$(mktemp -d)
  # lavapipe, the C/C++ runtime it was built against, LLVM and the libraries they load.
  bash "$(dirname "$0")/sid_download.sh" "$d" mesa-vulkan-drivers libvulkan1 libc6 libstdc++6 libgcc-s1 \
    libllvm22 libelf1t64 libzstd1 libexpat1 libdrm2 libdrm-amdgpu1 libwayland-client0 libx11-xcb1 \
    libx11-6 libxcb1 libxcb-dri3-0 libxcb-present0 libxcb-randr0 libxcb-shm0 libxcb-sync1 \
    libxcb-xfixes0 libxshmfence1 libxau6 libxdmcp6 libbsd0 libmd0 libdisplay-info3 libpng16-16t64 \
    zlib1g libffi8 libedit2 libxml2-16 libtinfo6 libz3-4 libicu76 liblzma5
  mkdir -p "$ROOT"
  for f in "$d"/debs/*.deb; do dpkg -x "$f" "$ROOT"; done
  sed "s#\"library_path\": \"[^\"]*\"#\"library_path\": \"$LIB/libvulkan_lvp.so\"#" \
    "$ROOT/usr/share/vulkan/icd.d/lvp_icd.json" > "$ROOT/lvp.json"
  rm -rf "$d"
}
if [ "${1:-}" = --setup ]; then
  setup
  exit
fi
setup >&2
export VK_DRIVER_FILES=$ROOT/lvp.json
exec "$LIB/ld-linux-x86-64.so.2" --library-path "$LIB:$ROOT/lib/x86_64-linux-gnu" "$@"
