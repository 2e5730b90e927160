#!/usr/bin/env python3
"""Seeded case-level split of an MSD/nnU-Net dataset folder (imagesTr/ + labelsTr/
+ dataset.json) into a training folder in the same layout and a withheld folder
(images/ + labels/) that no run sees. Files are symlinked, not copied.

    python3 datasets/split_msd.py ../shared/datasets/Hippocampus /tmp/hippo --test 40 --seed 2026

The split used for every Hippocampus row of docs/results.md: sorted case names,
random.Random(seed).sample(names, test)."""
import argparse
import json
import os
import random

ap = argparse.ArgumentParser()
ap.add_argument("src")
ap.add_argument("out")
ap.add_argument("--test", type=int, default=40)
ap.add_argument("--seed", type=int, default=2026)
a = ap.parse_args()
src = os.path.abspath(a.src)
names = sorted(n for n in os.listdir(os.path.join(src, "imagesTr")) if not n.startswith("."))
test = set(random.Random(a.seed).sample(names, a.test))
meta = json.load(open(os.path.join(src, "dataset.json")))
for d in ["train/imagesTr", "train/labelsTr", "test/images", "test/labels"]:
    os.makedirs(os.path.join(a.out, d), exist_ok=True)
for n in names:
    img, lab = os.path.join(src, "imagesTr", n), os.path.join(src, "labelsTr", n)
    if n in test:
        pairs = [(img, "test/images"), (lab, "test/labels")]
    else:
        pairs = [(img, "train/imagesTr"), (lab, "train/labelsTr")]
    for f, d in pairs:
        dst = os.path.join(a.out, d, n)
        if not os.path.lexists(dst):
            os.symlink(f, dst)
meta["training"] = [
    {"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in names if n not in test
]
meta["numTraining"] = len(meta["training"])
json.dump(meta, open(os.path.join(a.out, "train", "dataset.json"), "w"), indent=1)
print(f"{len(names) - len(test)} training cases in {a.out}/train, {len(test)} withheld in {a.out}/test")
