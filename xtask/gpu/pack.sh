#!/usr/bin/env bash
# Packs what xtask/gpu/run.sh needs on a machine with an NVIDIA GPU into
# target/gpu-kit (about 30-50 MiB): the parity test and the xtask built with
# --features cuda (stripped of debug info), and the 2D PyTorch fixtures from
# ../shared. Run it here, after `cargo xtask cuda-check --release`.
#
#   xtask/gpu/pack.sh [TARGET_DIR]     # default target/cuda-build
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${1:-target/cuda-build}/release"
kit=target/gpu-kit
fixtures="${SEG_PARITY_FIXTURES:-../shared/reference/fixtures}"

parity=$(find "$build/deps" -maxdepth 1 -type f -executable -name 'parity-*' -printf '%T@ %p\n' 2>/dev/null |
    sort -rn | head -n1 | cut -d' ' -f2-)
if [ -z "$parity" ] || [ ! -x "$build/xtask" ]; then
    echo "pack: no cuda build in $build: run cargo xtask cuda-check --release first" >&2
    exit 1
fi
rm -rf "$kit"
mkdir -p "$kit/fixtures"
strip --strip-debug -o "$kit/parity" "$parity"
strip --strip-debug -o "$kit/xtask" "$build/xtask"
if [ -d "$fixtures" ]; then
    cp "$fixtures"/*.safetensors "$kit/fixtures/"
else
    echo "pack: $fixtures not found: the GPU run will check the committed 3D fixtures only" >&2
fi
git rev-parse HEAD >"$kit/COMMIT" 2>/dev/null || true
du -sh "$kit"
echo "pack: $kit ready; on the GPU machine: bash xtask/gpu/run.sh $kit"
