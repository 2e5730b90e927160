#!/usr/bin/env bash
# Packs what xtask/gpu/run.sh needs on a machine with an NVIDIA GPU into
# target/gpu-kit (about 30-45 MiB): the parity test, the xtask and seg-cli
# built with --features cuda (stripped of debug info, xz-compressed: about
# 10 MiB each), the 2D PyTorch fixtures from ../shared and, for an
# end-to-end run, a split of ../shared's Hippocampus (60 training and 20
# withheld cases, about 6 MiB). Run it here, after `cargo xtask
# cuda-check`.
#
#   xtask/gpu/pack.sh [TARGET_DIR]     # default target/cuda-build
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${1:-target/cuda-build}/release"
kit=target/gpu-kit
fixtures="${SEG_PARITY_FIXTURES:-../shared/reference/fixtures}"
hippocampus="${SEG_HIPPOCAMPUS:-../shared/datasets/Hippocampus}"

parity=$(find "$build/deps" -maxdepth 1 -type f -executable -name 'parity-*' -printf '%T@ %p\n' 2>/dev/null |
    sort -rn | head -n1 | cut -d' ' -f2-)
if [ -z "$parity" ] || [ ! -x "$build/xtask" ] || [ ! -x "$build/seg-cli" ]; then
    echo "pack: no cuda build in $build: run cargo xtask cuda-check first" >&2
    exit 1
fi
rm -rf "$kit"
mkdir -p "$kit/fixtures"
for b in parity xtask seg-cli; do
    src="$build/$b"
    [ "$b" = parity ] && src="$parity"
    strip --strip-debug -o "$kit/$b" "$src"
    xz -T0 -6 "$kit/$b"
done
if [ -d "$fixtures" ]; then
    cp "$fixtures"/*.safetensors "$kit/fixtures/"
    # the PyTorch networks, for the GPU peer (torch_gpu_peer.py)
    mkdir -p "$kit/reference"
    cp "$fixtures/../models.py" "$kit/reference/"
else
    echo "pack: $fixtures not found: the GPU run will check the committed 3D fixtures only" >&2
fi
if [ -d "$hippocampus/imagesTr" ]; then
    tmp=$(mktemp -d)
    python3 datasets/split_msd.py "$hippocampus" "$tmp" --test 20 --seed 2026 >/dev/null
    # a smaller training set (the split's first 60 training cases), as files
    python3 - "$tmp/train" <<'PY'
import json, os, sys
d = sys.argv[1]
names = sorted(os.listdir(os.path.join(d, "imagesTr")))
for n in names[60:]:
    for sub in ("imagesTr", "labelsTr"):
        os.remove(os.path.join(d, sub, n))
meta = json.load(open(os.path.join(d, "dataset.json")))
meta["training"] = [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in names[:60]]
meta["numTraining"] = 60
json.dump(meta, open(os.path.join(d, "dataset.json"), "w"), indent=1)
PY
    cp -rL "$tmp" "$kit/hippo"
    rm -rf "$tmp"
else
    echo "pack: $hippocampus not found: the GPU run will skip the end-to-end training" >&2
fi
git rev-parse HEAD >"$kit/COMMIT" 2>/dev/null || true
du -sh "$kit"
echo "pack: $kit ready; on the GPU machine: bash xtask/gpu/run.sh $kit"
