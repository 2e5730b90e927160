#!/usr/bin/env bash
# Runs the parity fixtures, an end-to-end training and the benchmark on an
# NVIDIA GPU from a kit that xtask/gpu/pack.sh made (no Rust toolchain
# needed there). From the repository root of a copy of the working tree:
#
#   bash xtask/gpu/run.sh [KIT]        # default target/gpu-kit
#
# SEG_TEST_DEVICE (default cuda:0) picks the GPU; SEG_GPU_BENCH=0 skips the
# benchmark, SEG_GPU_BENCH=quick runs one U-Net case only; SEG_GPU_TRAIN=0
# skips the end-to-end run (Hippocampus from the kit: train with the plan on
# the GPU for SEG_GPU_TRAIN_TIME, default 90s, predict the withheld cases on
# the GPU and on the CPU, evaluate both and compare them, and run
# `xtask gpu-diag` on that bundle). Logs go to $OUT (or target/gpu-out),
# eight files at most, numbered in the order they matter (a lent machine
# returns 8 files): 0-env.txt (nvidia-smi, ldd), 1-parity.log, 2-diag.log,
# 3-train.log (training, metrics, predictions), 4-eval-gpu.json,
# 5-eval-cpu.json, 6-eval-gpu-vs-cpu.json, 7-bench.log (seg's 2D and 3D
# benchmark, then PyTorch on the same GPU and cases: torch_gpu_peer.py).
# Each step has its own timeout; the whole run stays under 9 minutes. The binaries were built against CUDA 13.0: the machine needs a
# driver for CUDA 13 and the CUDA 13 libraries (cuBLAS, cuRAND, NVRTC,
# cudart), from a toolkit or from pip's nvidia/cu13/lib, found below.
set -uo pipefail
cd "$(dirname "$0")/../.."
kit="${1:-target/gpu-kit}"
dev="${SEG_TEST_DEVICE:-cuda:0}"
out="${OUT:-target/gpu-out}"
mkdir -p "$out"
start=$(date +%s)
stamp() { echo "[$(($(date +%s) - start)) s] $*"; }

# the binaries, compressed in the kit
bin=$(mktemp -d)
for b in parity xtask seg-cli; do
    if [ -f "$kit/$b.xz" ]; then
        if command -v xz >/dev/null; then
            xz -dc "$kit/$b.xz" >"$bin/$b"
        else
            python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
                "$kit/$b.xz" "$bin/$b"
        fi
    elif [ -f "$kit/$b" ]; then
        cp "$kit/$b" "$bin/$b"
    fi
    chmod +x "$bin/$b" 2>/dev/null
done

dirs=()
for d in ${CUDA_LIBS:-} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $(python3 -c 'import nvidia, os; [print(os.path.join(p, "cu13", "lib")) for p in nvidia.__path__]' 2>/dev/null); do
    [ -d "$d" ] && dirs+=("$d")
done
libs=$(IFS=:; echo "${dirs[*]}")
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

env_txt="$out/0-env.txt"
{ nvidia-smi || echo "run: nvidia-smi failed"; } >"$env_txt" 2>&1
{ for b in parity xtask seg-cli; do echo "== ldd $b"; ldd "$bin/$b"; done; } >>"$env_txt" 2>&1
if grep -q '=> not found' "$env_txt"; then
    echo "run: libraries not found (set CUDA_LIBS to the folder of libcublas.so.13):" >&2
    grep '=> not found' "$env_txt" | sort -u >&2
    exit 1
fi

status=0
stamp "== parity on $dev (kit built from $(cat "$kit/COMMIT" 2>/dev/null || echo '?'))"
fixtures_2d="$kit/fixtures"
ls "$fixtures_2d"/*.safetensors >/dev/null 2>&1 || fixtures_2d="$kit/no-2d-fixtures"
SEG_TEST_DEVICE="$dev" SEG_PARITY_FIXTURES="$fixtures_2d" \
    SEG_PARITY_FIXTURES_3D=crates/seg-models/tests/fixtures3d \
    timeout 120 "$bin/parity" --nocapture --test-threads 1 2>&1 | tee "$out/1-parity.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

if [ "${SEG_GPU_TRAIN:-1}" != 0 ] && [ -d "$kit/hippo/train" ]; then
    run=$(mktemp -d)
    stamp "== end to end on $dev: train (the plan, ${SEG_GPU_TRAIN_TIME:-90s}) on $(ls "$kit/hippo/train/imagesTr" | wc -l) Hippocampus cases"
    log="$out/3-train.log"
    SEG_LOG=info timeout 180 "$bin/seg-cli" train --data "$kit/hippo/train" --device "$dev" \
        --max-time "${SEG_GPU_TRAIN_TIME:-90s}" --out "$run/train" 2>&1 | tee "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    cat "$run/train/metrics.json" >>"$log" 2>/dev/null
    for d in "$dev" cpu; do
        tag=gpu
        n=4
        [ "$d" = cpu ] && tag=cpu && n=5
        stamp "== predict the $(ls "$kit/hippo/test/images" | wc -l) withheld cases on $d" | tee -a "$log"
        /usr/bin/time -v timeout 120 "$bin/seg-cli" predict --checkpoint "$run/train/best.safetensors" \
            --device "$d" --input "$kit/hippo/test/images" --output "$run/pred-$tag" \
            >>"$log" 2>&1 || status=1
        timeout 60 "$bin/seg-cli" eval --pred "$run/pred-$tag/masks" --gt "$kit/hippo/test/labels" \
            --json "$out/$n-eval-$tag.json" 2>&1 | tail -n 4 || status=1
    done
    stamp "== GPU masks against CPU masks"
    timeout 60 "$bin/seg-cli" eval --pred "$run/pred-gpu/masks" --gt "$run/pred-cpu/masks" \
        --json "$out/6-eval-gpu-vs-cpu.json" 2>&1 | tail -n 4 || status=1
    stamp "== gpu-diag: that bundle on the CPU and on $dev"
    cases=$(ls "$kit/hippo/test/images"/* | head -n 2 | sed 's/^/--input /')
    # (candle appends a backtrace to errors under RUST_BACKTRACE: dropped)
    timeout 150 "$bin/xtask" gpu-diag --bundle "$run/train/best.safetensors" --device "$dev" $cases 2>&1 |
        grep -vE '^ +[0-9]+: |^ +at ' | tee "$out/2-diag.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

case "${SEG_GPU_BENCH:-all}" in
0) ;;
quick)
    stamp "== bench on $dev (one case)"
    timeout 90 "$bin/xtask" bench --device "$dev" --model unet --base 32 --rounds 1 2>&1 | tee -a "$out/7-bench.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    ;;
*)
    stamp "== bench on $dev"
    timeout 150 "$bin/xtask" bench --device "$dev" --rounds 1 2>&1 | tee -a "$out/7-bench.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    stamp "== bench --dims 3 on $dev"
    timeout 90 "$bin/xtask" bench --device "$dev" --dims 3 --rounds 1 2>&1 | tee -a "$out/7-bench.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    ;;
esac
if [ "${SEG_GPU_BENCH:-all}" != 0 ] && [ -f "$kit/reference/models.py" ]; then
    stamp "== PyTorch on $dev, the same cases (fp32 without TF32, with TF32, bf16 autocast)"
    PYTHONUNBUFFERED=1 timeout 120 python3 xtask/gpu/torch_gpu_peer.py "$kit" 2>&1 | tee -a "$out/7-bench.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
stamp "run: done (status $status); logs in $out"
exit $status
