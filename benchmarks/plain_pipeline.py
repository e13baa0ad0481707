"""The plain pipeline the benchmarks compare against, run as its own process.

    python benchmarks/plain_pipeline.py --files LIST --out CSV [--checkpoint DIR] [--heatmaps DIR]

What the original projects did: PIL to read, torchvision transforms to resize, float32 eager torch
in batches of 32 (the shipped network as written: BatchNorm unfolded, contiguous tensors), Captum
Grad-CAM per batch in float32 and the same PNG overlay as the engine. Raster images only.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.model.checkpoint import DEFAULT_MODEL_DIR, load_checkpoint  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", required=True, help="a text file, one image path a line")
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--heatmaps")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    files = [line.strip() for line in open(args.files) if line.strip()]
    model, card = load_checkpoint(args.checkpoint)
    size = card.preprocessing.image_size
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    explain = None
    if args.heatmaps:
        import cv2
        from captum.attr import LayerAttribution, LayerGradCam

        from engine.inference.overlay import side_by_side
        Path(args.heatmaps).mkdir(parents=True, exist_ok=True)
        def margin(x):
            z = model(x)
            return (z[:, 1] - z[:, 0]).unsqueeze(1)
        cam = LayerGradCam(margin, model.layer4)

        def explain(x, raw, names):
            attr = cam.attribute(x.requires_grad_(), target=0, relu_attributions=True)
            attr = LayerAttribution.interpolate(attr, (size, size), interpolate_mode="bilinear").squeeze(1)
            attr = (attr / attr.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)).detach().numpy()
            for img, heat, name in zip(raw, attr, names):
                rgb = side_by_side(img, heat)
                cv2.imwrite(str(Path(args.heatmaps) / (Path(name).stem + ".png")), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "probability"])
        for i in range(0, len(files), args.batch_size):
            names = files[i:i + args.batch_size]
            images = [Image.open(n).convert("L") for n in names]
            x = torch.stack([tf(im) for im in images])
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-6)
            with torch.no_grad():
                p = torch.softmax(model(x) / card.temperature, 1)[:, 1].numpy()
            for n, pr in zip(names, p):
                w.writerow([n, repr(float(pr))])
            if explain is not None:
                explain(x, [np.asarray(im, dtype=np.float32) / 255.0 for im in images], names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
