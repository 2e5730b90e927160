"""The PyTorch peer for seg's 3D benchmarks (`cargo xtask bench --dims 3`):
the 3D networks of crates/seg-models/tests/fixtures3d/models3d.py, the same
work as seg's side, timed the same way, one JSON line out in the format of
shared/bench/torch_peer.py (the 2D peer, which this follows).

    python torch_peer3d.py --model unet --base 16 --in-channels 1 --mode train --batch 2 --size 64
    python torch_peer3d.py --model unet --base 16 --in-channels 1 --mode infer --depth 128 --height 128 --width 128

Needs torch (CPU build is enough: `pip install torch`). Work per mode:
  train  one optimisation step on a random batch (N, C, size, size, size):
         forward in train mode, BCE-with-logits against a random {0,1}
         target, backward, Adam step (lr 1e-3). Deep-supervision outputs
         (heads, N, C, D, H, W) are averaged.
  infer  eval-mode forward, no autograd, on one (1, C, depth, height, width)
         volume.
Reported: median / min / max milliseconds per step over --reps timed steps
after --warmup untimed ones, throughput (the "megapixels_per_s" field counts
voxels), and the process's peak RSS.

--variant picks how the peer runs:
  fp32     PyTorch, float32, NCDHW (the default)
  fp32-cl  PyTorch, float32, torch.channels_last_3d
  bf16     PyTorch, channels_last_3d + torch.autocast("cpu", bfloat16)
  best     each of those in its own process; the fastest one's line is
           printed, with "tried" listing every variant's median
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "crates", "seg-models", "tests", "fixtures3d"))
from models3d import MODELS  # noqa: E402

VARIANTS = ["fp32", "fp32-cl", "bf16"]
IMPL = {"fp32": "pytorch", "fp32-cl": "pytorch", "bf16": "pytorch"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="unet", choices=sorted(MODELS))
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--out-channels", type=int, default=1)
    ap.add_argument("--bilinear", action="store_true", help="unet only (trilinear in 3D)")
    ap.add_argument("--mode", default="train", choices=["train", "infer"])
    ap.add_argument("--dims", type=int, default=3, choices=[3], help="always 3 (as xtask passes it)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="train: the cube side")
    ap.add_argument("--depth", type=int, default=128)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--variant", default="fp32", choices=VARIANTS + ["best"])
    a = ap.parse_args()
    if a.variant == "best":
        return best(a)

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    kw = dict(in_channels=a.in_channels, out_channels=a.out_channels, base=a.base)
    if a.model == "unet":
        kw["bilinear"] = a.bilinear
    model = MODELS[a.model](**kw)
    params = sum(p.numel() for p in model.parameters())

    channels_last = a.variant in ("fp32-cl", "bf16")
    bf16 = a.variant == "bf16"
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if a.mode == "train":
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        s = a.size
        x = torch.randn(a.batch, a.in_channels, s, s, s).to(memory_format=fmt)
        y = (torch.rand(a.batch, a.out_channels, s, s, s) > 0.8).float()

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
            if out.dim() == 6:  # deep supervision: (heads, N, C, D, H, W)
                out = out.mean(0)
            F.binary_cross_entropy_with_logits(out.float(), y).backward()
            opt.step()
        samples, voxels = a.batch, a.batch * s * s * s
    else:
        model.eval()
        x = torch.randn(1, a.in_channels, a.depth, a.height, a.width).to(memory_format=fmt)

        def step():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(x)
        samples, voxels = 1, a.depth * a.height * a.width

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(max(a.reps, 1)):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({
        "impl": IMPL[a.variant], "variant": a.variant, "torch": torch.__version__, "threads": a.threads,
        "model": a.model, "base": a.base, "in_channels": a.in_channels,
        "bilinear": a.bilinear, "params": params, "mode": a.mode,
        "shape": list(x.shape), "ms_median": round(med, 3),
        "ms_min": round(times[0], 3), "ms_max": round(times[-1], 3),
        "samples_per_s": round(samples / med * 1e3, 3),
        "megapixels_per_s": round(voxels / med / 1e3, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


def best(a):
    """Runs every variant in its own process; prints the fastest one's line."""
    argv, skip = [], False
    for x in sys.argv[1:]:
        if skip or x.startswith("--variant="):
            skip = False
            continue
        if x == "--variant":
            skip = True
            continue
        argv.append(x)
    rows = []
    for v in VARIANTS:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--variant", v],
                           capture_output=True, text=True)
        lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
        if r.returncode == 0 and lines:
            rows.append(json.loads(lines[-1]))
        else:
            print(f"variant {v} skipped: {(r.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
    if not rows:
        sys.exit("no variant ran")
    top = min(rows, key=lambda r: r["ms_median"])
    top["tried"] = {r["variant"]: r["ms_median"] for r in rows}
    print(json.dumps(top))


if __name__ == "__main__":
    main()
