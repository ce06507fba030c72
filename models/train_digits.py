"""Train the digits BN ResNet on scikit-learn's bundled handwritten digits and write its artifacts.

Usage:
    python models/train_digits.py

Runs on CPU in a few seconds (fixed seed, fixed split). The weights are reproducible for a given machine and
thread count; other thread counts change the float rounding, hence the weights slightly (1 and 2
threads gave the same train/test accuracies).

Writes, under models/artifacts/:
    digits_resnet.npz    the state dict, one numpy array per key (BN running stats included)
    digits_test.npz      the held-out split: images (uint8, NHWC (N, 8, 8, 1)), labels (int64), class_names
    digits_resnet.json   {"test_top1", "train_top1", "n_test", "seed", "steps"}

Accuracies are measured exactly as a consumer would: uint8 pixels through digits.preprocessing().apply(),
the model in eval mode, argmax of the logits. tests/test_zoo_models.py checks the recorded test accuracy.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.nn import functional as F

from toolchain_models.digits import (
    ARTIFACTS,
    CLASS_NAMES,
    MEAN,
    STD,
    digits_resnet,
    heldout_path,
    preprocessing,
    weights_path,
)

SEED = 0
STEPS = 600
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels); images uint8 NHWC (N, 8, 8, 1), labels int64."""
    digits = load_digits()
    # sklearn stores 0..16 ink levels; scale to the full uint8 range so the images look like ordinary pixels.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=0, stratify=labels
    )
    return x_train, y_train, x_test, y_test


def check_constants(x_train: np.ndarray) -> None:
    """Print the training-split mean/std and fail if digits.py's hard-coded constants no longer match them."""
    scaled = x_train.astype(np.float64) / 255.0
    mean, std = float(scaled.mean()), float(scaled.std())
    print(f"training split: mean {mean:.6f}  std {std:.6f}  (digits.py: MEAN={MEAN} STD={STD})")
    if round(mean, 4) != MEAN[0] or round(std, 4) != STD[0]:
        raise SystemExit(f"digits.py MEAN/STD are stale: set MEAN = ({mean:.4f},), STD = ({std:.4f},)")


def shift_augment(x: torch.Tensor, generator: torch.Generator, background: float) -> torch.Tensor:
    """Translate each image by up to one pixel in each direction, filling with the (normalised) background."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=background)
    dy = torch.randint(0, 3, (n,), generator=generator)
    dx = torch.randint(0, 3, (n,), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8] for i in range(n)])


@torch.no_grad()
def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).double().mean())


def main() -> None:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    x_train_u8, y_train_np, x_test_u8, y_test_np = load_split()
    check_constants(x_train_u8)

    pre = preprocessing()
    x_train = torch.from_numpy(pre.apply(x_train_u8))
    x_test = torch.from_numpy(pre.apply(x_test_u8))
    y_train, y_test = torch.from_numpy(y_train_np), torch.from_numpy(y_test_np)
    background = (0.0 - MEAN[0]) / STD[0]

    model = digits_resnet(len(CLASS_NAMES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    # Cosine decay to zero: the last steps settle the BN running statistics with small weight updates.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / STEPS)))

    start = time.perf_counter()
    order = torch.randperm(len(x_train), generator=generator)
    cursor = 0
    for step in range(STEPS):
        if cursor + BATCH_SIZE > len(order):  # a new epoch: reshuffle, drop the ragged tail
            order, cursor = torch.randperm(len(x_train), generator=generator), 0
        idx = order[cursor : cursor + BATCH_SIZE]
        cursor += BATCH_SIZE
        model.train()
        loss = F.cross_entropy(model(shift_augment(x_train[idx], generator, background)), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1:4d}  loss {loss.item():.4f}")
    seconds = time.perf_counter() - start

    train_top1, test_top1 = top1(model, x_train, y_train), top1(model, x_test, y_test)
    print(f"train top-1 {train_top1:.4f}  test top-1 {test_top1:.4f}  ({len(x_test)} test images, {seconds:.1f} s)")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(weights_path(), **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    np.savez_compressed(
        heldout_path(), images=x_test_u8, labels=y_test_np, class_names=np.array(CLASS_NAMES, dtype=str)
    )
    record = {"test_top1": test_top1, "train_top1": train_top1, "n_test": len(x_test), "seed": SEED, "steps": STEPS}
    (ARTIFACTS / "digits_resnet.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {weights_path()}, {heldout_path()}, {ARTIFACTS / 'digits_resnet.json'}")


if __name__ == "__main__":
    main()
