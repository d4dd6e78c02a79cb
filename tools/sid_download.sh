#!/usr/bin/env bash
# Downloads Debian unstable's .deb files of the given packages into DIR without touching the
# system's apt sources or state (a private list directory under DIR): for what Debian 12
# ships too old (Mesa with cooperative matrices, Vulkan headers for llama.cpp).
#   bash tools/sid_download.sh DIR PKG...
set -euo pipefail
DIR=$1; shift
mkdir -p "$DIR/apt/lists/partial" "$DIR/apt/cache/archives/partial" "$DIR/debs"
echo "deb http://deb.debian.org/debian sid main" > "$DIR/apt/sources.list"
APT=(-o "Dir::Etc::sourcelist=$DIR/apt/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$DIR/apt/lists"
     -o "Dir::Cache=$DIR/apt/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root -qq)
apt-get "${APT[@]}" update
(cd "$DIR/debs" && apt-get "${APT[@]}" download "$@")
