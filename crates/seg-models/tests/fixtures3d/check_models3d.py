"""Checks models3d.py and the 3D fixtures beside it.

    python check_models3d.py [--reference DIR]

1. Every <case>.safetensors written by make_fixtures_3d.py loads into its
   network (strict state_dict), has input/target/out_eval/out_train/loss, a
   grad.<param> for every parameter and after.<buffer> for every BN running
   statistic, finite values, outputs of the input's spatial size (UNet++ deep
   supervision in training: the 4 heads stacked, (4,N,C,D,H,W)), and float32
   values within the conditioning limits of make_fixtures_3d.py of a float64
   evaluation.
2. 2D equivalence: with weights that ignore depth (conv kernels zero outside
   the centre depth slice, transposed-conv kernels equal on both depth taps)
   and inputs constant along depth, every 3D network equals the 2D network of
   shared/reference/models.py on every depth slice, in eval and train mode
   (float64). Skipped when that folder is missing (--reference, default
   ../shared/reference beside the workspace root).
"""
import argparse
import glob
import json
import os
import sys

import torch
from safetensors import safe_open

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_fixtures_3d as mf  # noqa: E402
from models3d import MODELS  # noqa: E402

DATA = ("input", "target", "out_eval", "out_train", "loss")


def check_fixture(path):
    with safe_open(path, "pt") as s:
        md = s.metadata()
        t = {k: s.get_tensor(k) for k in s.keys()}
    cfg = json.loads(md["config"])
    assert cfg.pop("dims") == 3
    model = MODELS[cfg.pop("model")](**cfg)
    model.load_state_dict({k: v for k, v in t.items() if k not in DATA and not k.startswith(("grad.", "after."))})
    for k in DATA:
        assert k in t, f"{path}: no {k}"
    for n, _ in model.named_parameters():
        assert "grad." + n in t, f"{path}: no grad.{n}"
    for n, _ in model.named_buffers():
        if n.endswith(("running_mean", "running_var")):
            assert "after." + n in t, f"{path}: no after.{n}"
    assert all(torch.isfinite(v.float()).all() for v in t.values()), f"{path}: non-finite values"
    x = t["input"]
    want = (x.shape[0], cfg["out_channels"]) + tuple(x.shape[2:])
    assert tuple(t["out_eval"].shape) == want, f"{path}: out_eval {tuple(t['out_eval'].shape)}"
    want_train = ((4,) if cfg.get("deep_supervision") else ()) + want
    assert tuple(t["out_train"].shape) == want_train == tuple(t["target"].shape), f"{path}: out_train"
    outs, grads = mf.conditioning(model, t)
    assert outs <= mf.MAX_OUT_RATIO and grads <= mf.MAX_GRAD_RATIO, f"{path}: conditioning {outs}, {grads}"
    print(f"{os.path.basename(path)}: ok, input {tuple(x.shape)}, out_train {tuple(t['out_train'].shape)}, "
          f"float32 vs float64 {outs:.3f} / {grads:.3f} of the tolerances, config {md['config']}")


def check_2d_equivalence(reference):
    sys.path.insert(0, reference)
    import models as m2
    cases = [("unet", dict(in_channels=1, out_channels=1, base=2, bilinear=False)),
             ("unet", dict(in_channels=2, out_channels=2, base=2, bilinear=True)),
             ("resunet", dict(in_channels=1, out_channels=1, base=2)),
             ("attention_unet", dict(in_channels=1, out_channels=3, base=2)),
             ("unetpp", dict(in_channels=1, out_channels=1, base=2)),
             ("unetpp", dict(in_channels=1, out_channels=1, base=2, deep_supervision=True))]
    g = torch.Generator().manual_seed(1)
    for kind, kw in cases:
        torch.manual_seed(0)
        a = m2.MODELS[kind](**kw).double()
        b = MODELS[kind](**kw).double()
        s2, s3 = a.state_dict(), b.state_dict()
        assert list(s2) == list(s3), f"{kind}: state_dict names differ from the 2D model"
        for k, v in s2.items():
            if k.endswith("running_mean"):
                s2[k] = torch.randn(v.shape, generator=g, dtype=v.dtype) * 0.1
            elif k.endswith("running_var"):
                s2[k] = torch.rand(v.shape, generator=g, dtype=v.dtype) + 0.5
            if v.dim() == 4:
                if isinstance(b.get_submodule(k.rsplit(".", 1)[0]), torch.nn.ConvTranspose3d):
                    s3[k] = v.unsqueeze(2).repeat(1, 1, 2, 1, 1)
                else:
                    w = torch.zeros(s3[k].shape, dtype=v.dtype)
                    w[:, :, w.shape[2] // 2] = v
                    s3[k] = w
            else:
                s3[k] = s2[k]
        for shape in [(2, kw["in_channels"], 24, 24), (1, kw["in_channels"], 21, 35)]:
            x2 = torch.randn(shape, generator=g, dtype=torch.float64)
            x3 = x2.unsqueeze(2).repeat(1, 1, 16, 1, 1)
            for train in (False, True):
                # a train pass moves running_var by n/(n-1), n differing between 2D and 3D
                a.load_state_dict(s2)
                b.load_state_dict(s3)
                a.train(train)
                b.train(train)
                d = (b(x3) - a(x2).unsqueeze(-3)).abs().max().item()
                assert d < 1e-10, f"{kind} {kw} {shape} train={train}: 3D differs from 2D by {d}"
        print(f"2D equivalence: {kind} {kw}: ok")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", default=os.path.join(HERE, "../../../../../shared/reference"))
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(HERE, "*.safetensors")))
    assert len(files) == len(mf.CASES), f"{len(files)} fixtures, {len(mf.CASES)} cases"
    for f in files:
        check_fixture(f)
    if os.path.exists(os.path.join(args.reference, "models.py")):
        check_2d_equivalence(os.path.abspath(args.reference))
    else:
        print(f"2D equivalence skipped: no models.py in {args.reference}")


if __name__ == "__main__":
    main()
