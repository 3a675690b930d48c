#!/usr/bin/env bash
# Makes `cargo build --release --features cuda` work on a machine that cannot download LLVM.
#
# burn's CUDA backend (cubecl-cuda 0.11) links cubecl-llvm, whose build dependency
# tracel-llvm-bundler downloads a prebuilt LLVM 23 from GitHub unless its install folder,
# $XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4 (~/.local/share/... by default), already holds
# `bin/llvm-config` and a `.tracel-llvm-installed` marker. kiln compiles its CUDA kernels as
# CUDA C++ through NVRTC (cubecl-cuda's `cpp` feature), so LLVM is linked but never used at
# run time, and Debian's LLVM 22 can stand in for the bundle:
#
#   1. installs the Debian packages llvm-22-dev, libpolly-22-dev, libzstd-dev, libz3-dev and
#      libxml2-dev (the static LLVM libraries and what they link against);
#   2. writes, in the bundle folder, a `bin/llvm-config` that runs Debian's and rewrites the
#      full library paths `--system-libs` prints (/usr/lib/.../libz3.so) into the `-l` names
#      the bundler expects, and the marker.
#
# Run it as root, or with sudo (the folder is then made for the user who ran sudo). Running
# it again changes nothing. Not needed where github.com can be reached: the bundler then
# downloads its own LLVM on the first build.
set -euo pipefail

LLVM_MAJOR=22
BUNDLE=tracel-llvm-23.1.0-4
PACKAGES=(llvm-$LLVM_MAJOR-dev libpolly-$LLVM_MAJOR-dev libzstd-dev libz3-dev libxml2-dev)

if [ "$(id -u)" != 0 ]; then
    echo "setup-cuda-build.sh: run as root or with sudo (it installs ${PACKAGES[*]})" >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-cuda-build.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

LLVM_CONFIG=/usr/lib/llvm-$LLVM_MAJOR/bin/llvm-config
if [ ! -x "$LLVM_CONFIG" ]; then
    echo "setup-cuda-build.sh: $LLVM_CONFIG is missing after installing llvm-$LLVM_MAJOR-dev" >&2
    exit 1
fi

# The user who builds: the one who ran sudo, else root.
user="${SUDO_USER:-$(id -un)}"
home="$(getent passwd "$user" | cut -d: -f6)"
if [ -n "${SUDO_USER:-}" ]; then
    data="$home/.local/share"
else
    data="${XDG_DATA_HOME:-$home/.local/share}"
fi
dir="$data/tracel/$BUNDLE"

mkdir -p "$dir/bin"
cat > "$dir/bin/llvm-config.new" <<WRAPPER
#!/bin/sh
# Debian's LLVM $LLVM_MAJOR standing in for tracel's LLVM bundle (kiln's scripts/setup-cuda-build.sh).
out=\$($LLVM_CONFIG "\$@") || exit \$?
case " \$* " in
*" --system-libs "*)
    for word in \$out; do
        case \$word in
        /*/lib*.so | /*/lib*.a)
            name=\${word##*/lib}
            printf -- '-l%s ' "\${name%.*}" ;;
        *) printf '%s ' "\$word" ;;
        esac
    done
    echo ;;
*) printf '%s\n' "\$out" ;;
esac
WRAPPER
chmod 755 "$dir/bin/llvm-config.new"
# Files left as they are when unchanged: the bundler's build script reruns (and with it the
# whole CUDA stack above it) whenever the marker's modification time moves.
if cmp -s "$dir/bin/llvm-config.new" "$dir/bin/llvm-config"; then
    rm "$dir/bin/llvm-config.new"
else
    mv "$dir/bin/llvm-config.new" "$dir/bin/llvm-config"
fi
[ -e "$dir/.tracel-llvm-installed" ] || touch "$dir/.tracel-llvm-installed"
if [ -n "${SUDO_USER:-}" ]; then
    chown -R "$user": "$data/tracel"
fi
echo "setup-cuda-build.sh: $dir/bin/llvm-config runs $LLVM_CONFIG ($("$LLVM_CONFIG" --version));" \
    "cargo build --release --features cuda can now build offline"
