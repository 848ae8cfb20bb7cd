#!/usr/bin/env python3
"""Write the sample digit images in samples/ from the digits app's evaluation split.

    python3 make_samples.py            # rewrites samples/ (numpy only; no Pillow, no sklearn)

The source is sample_apps/digits/eval.npz: the 360 held-out images of
sklearn's load_digits() chosen by sample_apps/digits/data.py (never seen in
training or calibration), float32 (N, 1, 8, 8) = raw 0..16 / 16. For each
digit 0..9 the FIRST eval image of that class is taken (no picking of easy
ones), and written twice, the label leading the file name:

    digit-<label>-eval<index>.pgm  8x8, maxval 16: the raw values exactly, bright strokes
                                   on a dark background, as the data set stores them
    digit-<label>-eval<index>.png  32x32 (each pixel 4x4), 8-bit, DARK ink on a LIGHT
                                   background, like a scan of paper: classify.py has to
                                   invert it and downscale it to get the model's input back
"""

from __future__ import annotations

import argparse
import os
import struct
import zlib

import numpy as np

from classify import write_pgm  # this directory: the same writer the tests check the reader against

HERE = os.path.dirname(os.path.abspath(__file__))
EVAL = os.path.join(HERE, "..", "digits", "eval.npz")
PNG_SCALE = 4  # 8x8 -> 32x32, the size of the original NIST bitmaps load_digits was made from


def png_gray8(path: str, pixels: np.ndarray) -> None:
    """A minimal 8-bit grayscale PNG (stdlib zlib): IHDR, one IDAT, IEND (PNG spec, ISO/IEC 15948)."""
    height, width = pixels.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # bit depth 8, colour type 0 (gray)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels.astype(np.uint8))  # filter type 0 per row
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def first_of_each_class(y: np.ndarray) -> list[int]:
    return [int(np.flatnonzero(y == label)[0]) for label in range(10)]


def make(out_dir: str, eval_path: str = EVAL) -> list[str]:
    data = np.load(eval_path)
    x, y = data["x"], data["y"]
    raw = np.rint(x[:, 0] * 16).astype(np.int64)  # k/16 is exact in float32: this recovers the 0..16 counts
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for index in first_of_each_class(y):
        stem = os.path.join(out_dir, f"digit-{int(y[index])}-eval{index:03d}")
        write_pgm(stem + ".pgm", raw[index], maxval=16)
        ink_on_paper = 255 - np.rint(raw[index] * 255 / 16)
        png_gray8(stem + ".png", np.kron(ink_on_paper, np.ones((PNG_SCALE, PNG_SCALE))))
        written += [stem + ".pgm", stem + ".png"]
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "samples"), help="output directory [default: samples/ here]")
    args = p.parse_args()
    for path in make(args.out):
        print(os.path.relpath(path))


if __name__ == "__main__":
    main()
