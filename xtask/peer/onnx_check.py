"""Checks seg's ONNX exports with onnxruntime against the PyTorch reference.

Two modes:

    # onnxruntime on each fixture's `input` vs PyTorch's `out_eval` stored in
    # the fixture (no torch needed); ONNX_DIR holds <fixture stem>.onnx, as
    # written by `SEG_ONNX_OUT=ONNX_DIR cargo test -p seg-train --test
    # onnx_export pytorch_fixtures`
    python onnx_check.py fixtures ONNX_DIR FIXTURE_DIR [FIXTURE_DIR ...]

    # a bundle's weights loaded (strict) into the reference network of
    # shared/reference/models.py (2D, batch norm) or seg-models'
    # tests/fixtures3d/models3d.py (dims = 3), run eval-mode by torch, against
    # onnxruntime on the exported model, on random inputs of each --shape
    python onnx_check.py bundle BUNDLE.safetensors MODEL.onnx --shape 1x1x64x64 --shape 2x1x48x40

Passes when max |onnxruntime - PyTorch| / max(max |PyTorch|, 1e-3) < 1e-4
for every case; exits 1 otherwise. Needs numpy and onnxruntime (and torch
for the bundle mode).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

TOLERANCE = 1e-4
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    """(tensors, metadata) of a .safetensors file, without the safetensors package."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        tensors[name] = np.frombuffer(data[a:b], dtype=DTYPES[h["dtype"]]).reshape(h["shape"])
    return tensors, meta


def relative_difference(got, want):
    scale = max(float(np.abs(want).max()), 1e-3)
    return float(np.abs(got.astype(np.float64) - want).max()) / scale


def ort_run(onnx_path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (out,) = sess.run(["logits"], {"image": x.astype(np.float32)})
    return out


def check_fixtures(onnx_dir, fixture_dirs):
    failures, checked = [], 0
    for d in fixture_dirs:
        for name in sorted(os.listdir(d)):
            stem, ext = os.path.splitext(name)
            if ext != ".safetensors" or stem == "losses":
                continue
            onnx_path = os.path.join(onnx_dir, stem + ".onnx")
            if not os.path.exists(onnx_path):
                print(f"SKIP {stem}: no {onnx_path}")
                continue
            t, _ = read_safetensors(os.path.join(d, name))
            rel = relative_difference(ort_run(onnx_path, t["input"]), t["out_eval"])
            ok = rel < TOLERANCE
            print(f"{'ok  ' if ok else 'FAIL'} {stem} {list(t['input'].shape)}: "
                  f"max |onnxruntime - PyTorch| / scale = {rel:.2e}")
            checked += 1
            if not ok:
                failures.append(stem)
    return checked, failures


def reference_network(cfg):
    import importlib.util

    cfg = dict(cfg)
    kind = cfg.pop("model")
    dims = cfg.pop("dims", 2)
    norm = cfg.pop("norm", "batch")
    if norm not in ("batch", {"kind": "batch"}):
        sys.exit(f"the reference networks have batch norm only; this bundle has {norm!r}")
    if dims == 3:
        path = os.path.join(ROOT, "crates", "seg-models", "tests", "fixtures3d", "models3d.py")
    else:
        path = os.path.join(ROOT, "..", "shared", "reference", "models.py")
    spec = importlib.util.spec_from_file_location("reference_models", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.MODELS[kind](**cfg)


def check_bundle(bundle, onnx_path, shapes):
    import torch

    t, meta = read_safetensors(bundle)
    cfg = json.loads(meta["config"])
    net = reference_network(cfg)
    state = {k: torch.from_numpy(v.copy()) for k, v in t.items()}
    net.load_state_dict(state, strict=True)
    net.eval()
    rng = np.random.default_rng(0)
    failures = []
    for shape in shapes:
        x = rng.uniform(-2, 2, size=shape).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        rel = relative_difference(ort_run(onnx_path, x), want)
        ok = rel < TOLERANCE
        print(f"{'ok  ' if ok else 'FAIL'} {cfg['model']} {list(shape)}: "
              f"max |onnxruntime - PyTorch| / scale = {rel:.2e}")
        if not ok:
            failures.append(shape)
    return len(shapes), failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("onnx_dir")
    f.add_argument("fixture_dirs", nargs="+")
    b = sub.add_parser("bundle")
    b.add_argument("bundle")
    b.add_argument("onnx")
    b.add_argument("--shape", action="append", required=True,
                   type=lambda s: tuple(int(v) for v in s.split("x")))
    a = ap.parse_args()
    if a.mode == "fixtures":
        checked, failures = check_fixtures(a.onnx_dir, a.fixture_dirs)
    else:
        checked, failures = check_bundle(a.bundle, a.onnx, a.shape)
    if checked == 0:
        sys.exit("nothing checked")
    if failures:
        sys.exit(f"{len(failures)} of {checked} not within {TOLERANCE}: {failures}")
    print(f"all {checked} within {TOLERANCE}")


if __name__ == "__main__":
    main()
