"""PyTorch on the GPU, the peer of `xtask bench --device cuda:0`: the same
networks (2D: shared/reference/models.py, copied into the GPU kit as
reference/models.py; 3D: crates/seg-models/tests/fixtures3d/models3d.py)
and the same work as shared/bench/torch_peer.py and xtask/peer/torch_peer3d.py
(train: forward in train mode, BCE-with-logits against a random {0,1}
target, backward, Adam step, lr 1e-3; infer: eval-mode forward without
autograd), timed with torch.cuda.synchronize() after each step. One JSON
line per case and variant:

  fp32       float32, TF32 off for convolutions and matmuls (what seg's
             CUDA build computes: candle's f32 GEMMs)
  fp32-tf32  float32 with PyTorch's default TF32 convolutions (cuDNN)
  bf16       torch.autocast("cuda", bfloat16)

    python torch_gpu_peer.py KIT [--reps 10] [--warmup 3]
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

CASES = [
    # (dims, model, base, in_channels, mode, shape)
    (2, "unet", 32, 3, "train", (8, 3, 64, 64)),
    (2, "unet", 32, 3, "infer", (1, 3, 584, 565)),
    (3, "unet", 16, 1, "train", (2, 1, 64, 64, 64)),
    (3, "unet", 16, 1, "infer", (1, 1, 128, 128, 128)),
]


def load_models(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.MODELS


def run(models, case, variant, reps, warmup):
    dims, name, base, cin, mode, shape = case
    torch.backends.cudnn.allow_tf32 = variant == "fp32-tf32"
    torch.backends.cuda.matmul.allow_tf32 = variant == "fp32-tf32"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    dev = torch.device("cuda:0")
    kw = dict(in_channels=cin, out_channels=1, base=base)
    if name == "unet":
        kw["bilinear"] = False
    model = models[name](**kw).to(dev)
    x = torch.randn(*shape, device=dev)
    bf16 = variant == "bf16"
    if mode == "train":
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        y = (torch.rand(shape[0], 1, *shape[2:], device=dev) > 0.8).float()

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
            F.binary_cross_entropy_with_logits(out.float(), y).backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                model(x)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {
        "impl": "pytorch-cuda", "variant": variant, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0), "dims": dims, "model": name, "base": base,
        "mode": mode, "shape": list(shape), "ms_median": round(times[len(times) // 2], 3),
        "ms_min": round(times[0], 3), "ms_max": round(times[-1], 3),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kit")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.normpath(os.path.join(here, "..", ".."))
    models = {
        2: load_models(os.path.join(a.kit, "reference", "models.py")),
        3: load_models(os.path.join(root, "crates", "seg-models", "tests", "fixtures3d", "models3d.py")),
    }
    for case in CASES:
        for variant in ("fp32", "fp32-tf32", "bf16"):
            torch.cuda.reset_peak_memory_stats()
            try:
                print(json.dumps(run(models[case[0]], case, variant, a.reps, a.warmup)), flush=True)
            except Exception as e:  # a case that fails is reported, the others run
                print(json.dumps({"case": list(map(str, case)), "variant": variant, "error": str(e)}), flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
