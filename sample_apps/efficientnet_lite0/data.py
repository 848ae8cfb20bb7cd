"""Real photos as calibration and evaluation inputs, without a download.

scikit-learn ships two photographs (`sklearn.datasets.load_sample_images()`: a
Chinese temple and a flower, 427x640 RGB). Random square crops of 160-400 px,
resized to 224x224 (bilinear, antialiased), scaled to [0, 1] and normalised with
the ImageNet mean and std, are inputs of the kind the network was trained on.
Two disjoint seeds give two sets:

    calib.npz  32 crops (seed 0)   x (N, 3, 224, 224) float32
    eval.npz   32 other crops (seed 1), no labels: the artifact is judged
               against the float model's predictions

    python sample_apps/efficientnet_lite0/data.py [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]  # ImageNet, per RGB channel
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
CALIB, EVAL = 32, 32


def photo_crops(n: int, seed: int, size: int = SIZE) -> np.ndarray:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(160, 401))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = torch.from_numpy(photo[top:top + side, left:left + side].astype(np.float32) / 255).permute(2, 0, 1)
        crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        crops.append((crop.numpy() - MEAN) / STD)
    return np.stack(crops).astype(np.float32)


def write(out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    calib, evaluation = out / "calib.npz", out / "eval.npz"
    np.savez(calib, x=photo_crops(CALIB, seed=0))
    np.savez(evaluation, x=photo_crops(EVAL, seed=1))
    return calib, evaluation


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    for path in write(parser.parse_args().out):
        print(path)
