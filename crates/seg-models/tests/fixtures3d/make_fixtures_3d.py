"""Writes the 3D parity fixtures that the Rust `dims = 3` networks are checked against.

    python make_fixtures_3d.py [OUT_DIR] [--seed N]

OUT_DIR defaults to the folder this script is in. Needs torch, numpy and
safetensors. Derived from shared/reference/make_fixtures.py (same procedure,
same file layout), for the 3D networks of models3d.py. For every network
configuration below it writes OUT_DIR/<name>.safetensors holding:
  <param>            every state_dict entry (PyTorch names; BN running stats
                     are randomised so that eval mode is a real test)
  input, target      the input batch (NCDHW) and a {0,1} target of the output's shape
  out_eval           model.eval()(input)
  out_train          model.train()(input)   (BatchNorm uses batch statistics;
                     UNet++ with deep supervision: the 4 heads stacked, (4,N,C,D,H,W))
  loss               BCE-with-logits(out_train, target), mean
  grad.<param>       d loss / d param for every trainable parameter
  after.<buffer>     BN running_mean / running_var after that one train pass
and in the file's metadata: "config", the configuration as JSON, serialised
exactly as make_fixtures.py does (json.dumps of {"model": ..., then the case's
constructor arguments in the order given below}) with "dims": 3 appended;
"input_shape" (JSON list); and "seed", the seed the case was built from.

Each case takes the first seed of (--seed)*100 + index + 1000*k, k = 0, 1, ...
whose float32 fixture lies well inside the parity tolerances of a float64
evaluation of the same weights and input (see model_case); the script prints
each case's seed and those ratios. check_models3d.py checks the written files.
"""
import argparse
import copy
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from models3d import MODELS

CASES = [
    # name, model, kwargs, input shape (N, C, D, H, W)
    # The batch-1 "_odd" cases have one axis of 32 or more: four poolings take
    # every axis under 32 down to 1, and train-mode BatchNorm over a batch of
    # one 1x1x1 bottleneck (a single value per channel) is undefined.
    ("unet3d_transposed", "unet", dict(in_channels=1, out_channels=1, base=2, bilinear=False), (2, 1, 16, 16, 16)),
    ("unet3d_bilinear_odd", "unet", dict(in_channels=1, out_channels=2, base=2, bilinear=True), (1, 1, 17, 20, 35)),
    ("resunet3d", "resunet", dict(in_channels=1, out_channels=1, base=2), (2, 1, 16, 16, 16)),
    ("resunet3d_odd", "resunet", dict(in_channels=2, out_channels=1, base=2), (1, 2, 18, 35, 21)),
    ("attention_unet3d", "attention_unet", dict(in_channels=1, out_channels=1, base=2), (2, 1, 16, 16, 16)),
    ("attention_unet3d_odd", "attention_unet", dict(in_channels=1, out_channels=3, base=2), (1, 1, 37, 16, 17)),
    ("unetpp3d", "unetpp", dict(in_channels=1, out_channels=1, base=2), (2, 1, 16, 16, 16)),
    ("unetpp3d_deep_odd", "unetpp", dict(in_channels=1, out_channels=1, base=2, deep_supervision=True), (1, 1, 17, 18, 33)),
]


SEED_TRIES = 20
MAX_OUT_RATIO = 0.35
MAX_GRAD_RATIO = 0.3


def bce(logits, target):
    """Binary cross-entropy on logits, mean over every element (losses.bce)."""
    return F.binary_cross_entropy_with_logits(logits, target)


def randomise(model, g):
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith(".weight") and t.dim() == 1:  # BN gamma
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith(".bias") and t.dim() == 1:
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)


def build(kind, kwargs, shape, seed):
    """The fixture tensors for one case and seed, as make_fixtures.py makes them."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = MODELS[kind](**kwargs)
    randomise(model, g)
    x = torch.randn(shape, generator=g)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}

    model.eval()
    with torch.no_grad():
        out_eval = model(x)

    train_model = copy.deepcopy(model).train()
    out_train = train_model(x)
    target = (torch.rand(out_train.shape, generator=g) > 0.7).float()
    loss = bce(out_train, target)
    loss.backward()

    t = dict(state)
    t["input"] = x
    t["target"] = target
    t["out_eval"] = out_eval
    t["out_train"] = out_train.detach()
    t["loss"] = loss.detach().reshape(1)
    for pname, p in train_model.named_parameters():
        t["grad." + pname] = p.grad.detach().clone()
    for bname, b in train_model.named_buffers():
        if bname.endswith(("running_mean", "running_var")):
            t["after." + bname] = b.detach().clone()
    return model, t


def conditioning(model, t):
    """How far this float32 fixture is from a float64 evaluation of the same
    network, weights and input, as a fraction of the parity tolerances
    (shared/README.md): outputs and loss |a-b| <= 1e-4 + 1e-4*|b|, gradients
    max|a-b| <= max(1e-3 * max|b|, 1e-6). Returns (outputs, gradients)."""
    m64 = copy.deepcopy(model).double()
    x = t["input"].double()
    m64.eval()
    with torch.no_grad():
        e64 = m64(x)
    m64.train()
    o64 = m64(x)
    l64 = F.binary_cross_entropy_with_logits(o64, t["target"].double())
    l64.backward()

    def out_ratio(a, b):
        return ((a.double() - b).abs() / (1e-4 + 1e-4 * b.abs())).max().item()

    outs = max(out_ratio(t["out_eval"], e64), out_ratio(t["out_train"], o64.detach()),
               out_ratio(t["loss"], l64.detach().reshape(1)))
    grads = max(((t["grad." + n].double() - p.grad).abs().max().item()
                 / max(1e-3 * p.grad.abs().max().item(), 1e-6)) for n, p in m64.named_parameters())
    return outs, grads


def model_case(out_dir, name, kind, kwargs, shape, seed):
    # Train-mode BatchNorm over a handful of values per channel (the deepest
    # level here is 1 or 2 voxels) can sit where float32 round-off is
    # amplified well past the tolerances, and ReLU inputs near zero can land
    # on the other side of the kink in float32. So each case takes the first
    # seed of seed, seed+1000, ... whose float32 fixture is within
    # MAX_OUT_RATIO / MAX_GRAD_RATIO of the tolerances from float64.
    best = None
    for k in range(SEED_TRIES):
        s = seed + 1000 * k
        model, t = build(kind, kwargs, shape, s)
        outs, grads = conditioning(model, t)
        if best is None or max(outs, grads) < max(best[3], best[4]):
            best = (s, model, t, outs, grads)
        if outs <= MAX_OUT_RATIO and grads <= MAX_GRAD_RATIO:
            break
    else:
        print(f"warning: {name}: no seed within the conditioning limits, using the best")
    s, model, t, outs, grads = best
    cfg = dict(model=kind, **kwargs, dims=3)
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(out_dir, name + ".safetensors"),
              metadata={"config": json.dumps(cfg), "input_shape": json.dumps(list(shape)), "seed": str(s)})
    return name, sum(p.numel() for p in model.parameters()), s, outs, grads


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    for i, (name, kind, kwargs, shape) in enumerate(CASES):
        n, params, seed, outs, grads = model_case(args.out_dir, name, kind, kwargs, shape, args.seed * 100 + i)
        print(f"{n}: {params} parameters, seed {seed}, float32 vs float64: outputs {outs:.3f}, "
              f"gradients {grads:.3f} of the tolerances")


if __name__ == "__main__":
    main()
