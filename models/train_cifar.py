"""Train a family model on CIFAR-10 (../shared/datasets JPEGs) and write its weights and record.

Usage:
    python models/train_cifar.py mobilenet_v3_cifar --epochs 18
    python models/train_cifar.py shufflenet_v2_cifar --epochs 20 --threads 2 --shared ../shared

On 2 CPU cores an epoch takes about 1.5-2 minutes (both nets have ~0.3 M parameters). SGD with Nesterov
momentum, one-cycle learning rate, label smoothing 0.1, random crop (4-pixel zero padding) and
horizontal flips; fixed seed. The images go through the zoo's CIFAR preprocessing (the same mean and
std `toolchain export` stamps into the model), so the FP32 accuracy recorded here is what
`toolchain evaluate` measures on the exported model.

Writes, under models/artifacts/:
    NAME.npz     the state dict, one numpy array per key (BN running statistics included)
    NAME.json    {"test_top1", "train_top1_last_epoch", "epochs", "seconds", "seed", "threads", "parameters"}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from toolchain.data.images import open_images
from toolchain.export.zoo import ZOO
from toolchain_models import families

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
FACTORIES = {"mobilenet_v3_cifar": families.mobilenet_v3_cifar, "shufflenet_v2_cifar": families.shufflenet_v2_cifar}


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded batch, and a horizontal flip of half the images."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, x.shape[1], h, w + 8)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, x.shape[1], h, w)
    cropped = cropped.gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


@torch.no_grad()
def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(FACTORIES))
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.2, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    pre = ZOO["resnet20_cifar10"].preprocessing
    datasets = args.shared / "datasets"
    train = open_images(datasets / "cifar10-train-jpg.tar.gz", pre)
    test = open_images(datasets / "cifar10-test-jpg.tar.gz", pre)
    x_train, y_train = torch.from_numpy(pre.apply(train.images)), torch.from_numpy(train.labels)
    x_test, y_test = torch.from_numpy(pre.apply(test.images)), torch.from_numpy(test.labels)
    print(f"{len(x_train)} training and {len(x_test)} test images")

    model = FACTORIES[args.name]()
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]  # BN, biases, layer scales
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = len(x_train) // args.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.25)

    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        correct = 0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            logits = model(augment(x_train[idx], generator))
            loss = F.cross_entropy(logits, y_train[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            correct += int((logits.argmax(1) == y_train[idx]).sum())
        train_top1 = correct / (steps_per_epoch * args.batch_size)
        print(f"epoch {epoch + 1:3d}/{args.epochs}  loss {loss.item():.3f}  train top-1 {train_top1:.4f}  "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - start
    test_top1 = top1(model, x_test, y_test)
    print(f"test top-1 {test_top1:.4f} on {len(x_test)} images ({seconds / 60:.1f} min)")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(ARTIFACTS / f"{args.name}.npz", **{k: v.detach().numpy() for k, v in model.state_dict().items()})
    record = {"test_top1": test_top1, "train_top1_last_epoch": train_top1, "n_test": len(x_test), "epochs": args.epochs,
              "seconds": round(seconds, 1), "seed": args.seed, "threads": args.threads, "lr": args.lr,
              "parameters": sum(p.numel() for p in model.parameters())}
    (ARTIFACTS / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {ARTIFACTS / (args.name + '.npz')} and {ARTIFACTS / (args.name + '.json')}")


if __name__ == "__main__":
    main()
