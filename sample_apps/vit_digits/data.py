"""Fixed, disjoint, stratified splits of scikit-learn's digits data set.

load_digits() ships with scikit-learn: nothing is downloaded.
"""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

CALIB_SIZE = 300
EVAL_SIZE = 360


def load_splits(seed: int = 0) -> dict:
    """Return {"train_x", "train_y", "calib_x", "calib_y", "eval_x", "eval_y"}.

    x arrays are float32 of shape (N, 1, 8, 8) scaled to [0, 1] (raw / 16);
    y arrays are int64. Sizes: train 1137, calib 300, eval 360 (of 1797).
    """
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)

    # First carve out the eval split, then the calibration split from the rest.
    x_rest, x_eval, y_rest, y_eval = train_test_split(
        x, y, test_size=EVAL_SIZE, stratify=y, random_state=seed
    )
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest, y_rest, test_size=CALIB_SIZE, stratify=y_rest, random_state=seed
    )
    return {
        "train_x": np.ascontiguousarray(x_train),
        "train_y": y_train,
        "calib_x": np.ascontiguousarray(x_calib),
        "calib_y": y_calib,
        "eval_x": np.ascontiguousarray(x_eval),
        "eval_y": y_eval,
    }
