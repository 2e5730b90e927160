#!/usr/bin/env bash
# Runs the parity fixtures and the benchmark on an NVIDIA GPU from a kit that
# xtask/gpu/pack.sh made (no Rust toolchain needed there). From the
# repository root of a copy of the working tree:
#
#   bash xtask/gpu/run.sh [KIT]        # default target/gpu-kit
#
# SEG_TEST_DEVICE (default cuda:0) picks the GPU; SEG_GPU_BENCH=0 skips the
# benchmark, SEG_GPU_BENCH=quick runs one U-Net case only. Logs go to $OUT
# (or target/gpu-out): nvidia-smi.txt, ldd.txt, parity.log, bench.log,
# bench3d.log (each step has its own timeout; the whole run stays under 9
# minutes). The binaries were built against CUDA 13.0: the machine needs a
# driver for CUDA 13 and the CUDA 13 libraries (cuBLAS, cuRAND, NVRTC,
# cudart), from a toolkit or from pip's nvidia/cu13/lib, found below.
set -uo pipefail
cd "$(dirname "$0")/../.."
kit="${1:-target/gpu-kit}"
dev="${SEG_TEST_DEVICE:-cuda:0}"
out="${OUT:-target/gpu-out}"
mkdir -p "$out"

dirs=()
for d in ${CUDA_LIBS:-} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $(python3 -c 'import nvidia, os; [print(os.path.join(p, "cu13", "lib")) for p in nvidia.__path__]' 2>/dev/null); do
    [ -d "$d" ] && dirs+=("$d")
done
libs=$(IFS=:; echo "${dirs[*]}")
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || echo "run: nvidia-smi failed" >&2
{ echo "== parity"; ldd "$kit/parity"; echo "== xtask"; ldd "$kit/xtask"; } >"$out/ldd.txt" 2>&1
if grep -q 'not found' "$out/ldd.txt"; then
    echo "run: libraries not found (set CUDA_LIBS to the folder of libcublas.so.13):" >&2
    grep 'not found' "$out/ldd.txt" | sort -u >&2
    exit 1
fi

status=0
echo "== parity on $dev (kit built from $(cat "$kit/COMMIT" 2>/dev/null || echo '?'))"
fixtures_2d="$kit/fixtures"
ls "$fixtures_2d"/*.safetensors >/dev/null 2>&1 || fixtures_2d="$kit/no-2d-fixtures"
SEG_TEST_DEVICE="$dev" SEG_PARITY_FIXTURES="$fixtures_2d" \
    SEG_PARITY_FIXTURES_3D=crates/seg-models/tests/fixtures3d \
    timeout 180 "$kit/parity" --nocapture --test-threads 1 2>&1 | tee "$out/parity.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

case "${SEG_GPU_BENCH:-all}" in
0) ;;
quick)
    echo "== bench on $dev (one case)"
    timeout 120 "$kit/xtask" bench --device "$dev" --model unet --base 32 --rounds 1 2>&1 | tee "$out/bench.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    ;;
*)
    echo "== bench on $dev"
    timeout 240 "$kit/xtask" bench --device "$dev" --rounds 1 2>&1 | tee "$out/bench.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    echo "== bench --dims 3 on $dev"
    timeout 120 "$kit/xtask" bench --device "$dev" --dims 3 --rounds 1 2>&1 | tee "$out/bench3d.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    ;;
esac
echo "run: done (status $status); logs in $out"
exit $status
