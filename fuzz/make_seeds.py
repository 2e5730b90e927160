#!/usr/bin/env python3
"""Fills fuzz/corpus/<target>/ with seed inputs.

Seeds come from ../shared/medical (DICOM, NIfTI), the TotalSegmentator example
(a JPEG 2000 CT series, NIfTI volumes), ../shared/reference/fixtures
(safetensors), the project's configs, a tiny checkpoint bundle trained here,
and small images and zips made here with Pillow and zipfile. Nothing under
corpus/ is committed (DRIVE and the shared files may not be redistributed).

usage: python3 fuzz/make_seeds.py   (from the repository root; needs Pillow)
"""
import gzip
import io
import os
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def out(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def files(folder, suffixes):
    if not os.path.isdir(folder):
        print(f"skip: {folder} not found", file=sys.stderr)
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(suffixes))


def main():
    for p in files(os.path.join(SHARED, "medical", "dicom"), (".dcm",)):
        out("dicom", os.path.basename(p), open(p, "rb").read())
    ts = os.path.join(SHARED, "datasets", "TotalSegmentator-example")
    for p in files(os.path.join(ts, "example_ct_dicom"), ("",)):
        out("dicom", "ts_" + os.path.basename(p)[-8:] + ".dcm", open(p, "rb").read())
    nii = files(os.path.join(SHARED, "medical", "nifti"), (".nii", ".nii.gz"))
    for p in nii + files(ts, (".nii.gz",)):
        raw = open(p, "rb").read()
        plain = gzip.decompress(raw) if p.endswith(".gz") else raw
        name = os.path.basename(p)
        out("nifti", name, plain)
        # nifti_gz: first byte 0 = the bytes are the .nii.gz file, 1 = compress the rest
        out("nifti_gz", name + ".raw", b"\x00" + gzip.compress(plain))
        out("nifti_gz", name + ".plain", b"\x01" + plain)
    hip = os.path.join(SHARED, "datasets", "Hippocampus", "dataset.json")
    if os.path.isfile(hip):
        out("dataset_json", "hippocampus_v1.json", open(hip, "rb").read())
    out("dataset_json", "nnunet_v2.json",
        b'{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": [1, 2]},'
        b' "numTraining": 2, "file_ending": ".nii.gz"}')
    for p in files(os.path.join(SHARED, "reference", "fixtures"), (".safetensors",)):
        if os.path.getsize(p) < 1 << 20:
            out("checkpoint", os.path.basename(p), open(p, "rb").read())
    # a tiny bundle and resume state trained here
    run = os.path.join(ROOT, "target", "fuzz-seed-run")
    shutil.rmtree(run, ignore_errors=True)
    # an already built seg-cli (release or the test suite's debug build), else a dev build
    built = [os.path.join(ROOT, "target", prof, "seg-cli") for prof in ("release", "debug")]
    exe = next((b for b in built if os.path.isfile(b)), None)
    cmd = [exe] if exe else ["cargo", "run", "-q", "-p", "seg-cli", "--"]
    r = subprocess.run(
        cmd + ["train", "--model", "unet", "--base", "2", "--epochs", "1", "--steps", "1",
               "--batch", "2", "--patch", "32", "--out", run],
        cwd=ROOT,
    )
    if r.returncode == 0:
        for n in ("last.safetensors", "last.state.safetensors"):
            out("checkpoint", n, open(os.path.join(run, n), "rb").read())
    for p in files(os.path.join(ROOT, "configs"), (".toml",)):
        out("train_config", os.path.basename(p), open(p, "rb").read())
    out("train_config", "minimal.toml", b'epochs = 2\nbatch = 4\n[model]\nmodel = "unet"\nbase = 4\n')
    try:
        from PIL import Image
    except ImportError:
        print("skip: image seeds need Pillow (pip install pillow)", file=sys.stderr)
    else:
        img = Image.new("RGB", (7, 5))
        for x in range(7):
            for y in range(5):
                img.putpixel((x, y), (x * 30, y * 50, 100))
        # image: first byte picks the reader (0 png, 1 tif, 2 gif, 3 jpg)
        for i, (fmt, mode) in enumerate([("PNG", "RGB"), ("TIFF", "RGB"), ("GIF", "P"), ("JPEG", "RGB")]):
            b = io.BytesIO()
            img.convert(mode).save(b, fmt)
            out("image", f"{fmt.lower()}", bytes([i]) + b.getvalue())
        b = io.BytesIO()
        Image.new("I;16", (4, 3), 1000).save(b, "PNG")
        out("image", "png16", b"\x00" + b.getvalue())
        b = io.BytesIO()
        Image.new("L", (4, 3), 255).save(b, "GIF")
        out("image", "mask_gif", b"\x02" + b.getvalue())
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("DRIVE/training/images/21_training.tif", b"tiffdata")
        z.writestr("DRIVE/training/1st_manual/21_manual1.gif", b"GIF89a" + bytes(100))
        z.writestr("DRIVE/readme.txt", b"not in the manifest")
    out("fetch_zip", "drive.zip", b.getvalue())
    print(f"seeds written under {CORPUS}")


if __name__ == "__main__":
    main()
