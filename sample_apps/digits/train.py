"""Train DigitsCNN on the digits train split and write the sample's artifacts.

    python sample_apps/digits/train.py [--epochs N] [--out DIR]

Writes into DIR (default: this script's directory):
    weights.pt  state_dict (loads with torch.load(..., weights_only=True))
    train.npz   x, y
    calib.npz   x, y       (calibration needs no labels; with them `edgekit search` measures accuracy there)
    eval.npz    x, y
"""

import argparse
import os
import sys
import time

# This is a standalone script, not part of a package: put its own directory on
# sys.path so that `model` and `data` import from any working directory.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from data import load_splits  # noqa: E402
from model import build_model  # noqa: E402


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to max_shift pixels in x and y, zero-filled."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=HERE, help="output directory (default: %(default)s)")
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)

    splits = load_splits(seed=0)  # the split is fixed, independent of --seed
    x_train = torch.from_numpy(splits["train_x"])
    y_train = torch.from_numpy(splits["train_y"])
    x_eval = torch.from_numpy(splits["eval_x"])
    y_eval = torch.from_numpy(splits["eval_y"])

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"DigitsCNN: {n_params} parameters; train {len(x_train)}, "
          f"calib {len(splits['calib_x'])}, eval {len(x_eval)}")

    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = (len(x_train) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    gen = torch.Generator().manual_seed(args.seed)

    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total_loss = 0.0
        for start in range(0, len(x_train), args.batch_size):
            idx = perm[start : start + args.batch_size]
            xb = random_shift(x_train[idx], gen)
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
        acc = accuracy(model, x_eval, y_eval)
        print(f"epoch {epoch:3d}  loss {total_loss / len(x_train):.4f}  eval acc {acc:.4f}")
    elapsed = time.perf_counter() - t0

    model.eval()
    acc = accuracy(model, x_eval, y_eval)
    print(f"trained in {elapsed:.1f} s; float eval accuracy {acc:.4f} "
          f"({round(acc * len(y_eval))}/{len(y_eval)})")

    os.makedirs(args.out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(args.out, "weights.pt"))
    np.savez(os.path.join(args.out, "train.npz"), x=splits["train_x"], y=splits["train_y"])
    np.savez(os.path.join(args.out, "calib.npz"), x=splits["calib_x"], y=splits["calib_y"])
    np.savez(os.path.join(args.out, "eval.npz"), x=splits["eval_x"], y=splits["eval_y"])
    print(f"wrote weights.pt, train.npz, calib.npz, eval.npz to {args.out}")


if __name__ == "__main__":
    main()
