"""Search a self-supervised recipe for Fashion-MNIST on a small CPU budget.

A deliberately plain PyTorch loop: batched kornia views, SmallCNN + projection head, a simple
NT-Xent written here (to be replaced by the library loss), weighted kNN (k=200, T=0.1) on backbone
features after every epoch. Prints one line per epoch and a final JSON line.

    python benchmarks/recipe_search.py --baselines 1 --eval-every 0   # recommended recipe
    python benchmarks/recipe_search.py --scale 0.2 1 --temperature 0.1 --intensity 0 --epochs 15

Defaults are the recommended recipe (docs/recipe_notes.md); the second line is the anchors' set-up.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairsmith.data.fashion_mnist import FashionMNIST, balanced_subset
from pairsmith.data.views import DATASET_STATS, Views, ViewSpec
from pairsmith.eval.knn import extract_features, knn_accuracy, pixel_features
from pairsmith.models import ProjectionHead, SmallCNN

MEAN, STD = DATASET_STATS["fashion_mnist"]


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    a = p.add_argument
    a("--train-size", type=int, default=10000, help="balanced subset size; 60000 = full train set")
    a("--epochs", type=float, default=30)
    a("--batch-size", type=int, default=256)
    a("--optimizer", choices=["sgd", "adam", "adamw", "lars"], default="sgd")
    a("--lr", type=float, default=0.12, help="peak lr (not scaled by batch size)")
    a("--momentum", type=float, default=0.9)
    a("--wd", type=float, default=5e-4)
    a("--warmup-epochs", type=float, default=0.0)
    a("--schedule", choices=["cosine", "constant"], default="cosine")
    a("--temperature", type=float, default=0.2)
    a("--scale", type=float, nargs=2, default=(0.5, 1.0))
    a("--ratio", type=float, nargs=2, default=(3 / 4, 4 / 3))
    a("--flip", type=float, default=0.5)
    a("--affine-p", type=float, default=0.0)
    a("--degrees", type=float, default=0.0)
    a("--translate", type=float, default=0.0)
    a("--erase-p", type=float, default=0.0)
    a("--blur-p", type=float, default=0.0)
    a("--jitter", type=float, nargs=2, default=(0.4, 0.4), help="brightness, contrast")
    a("--jitter-p", type=float, default=0.8)
    a("--intensity", type=int, default=1, help="brightness/contrast jitter on grayscale")
    a("--widths", type=int, nargs="+", default=[32, 64, 128, 256])
    a("--proj-hidden", type=int, default=512)
    a("--proj-out", type=int, default=128)
    a("--proj-layers", type=int, default=2)
    a("--channels-last", type=int, default=1)
    a("--bf16", type=int, default=1, help="CPU autocast to bfloat16")
    a("--threads", type=int, default=1, help="1 is faster when the cores are shared")
    a("--seed", type=int, default=0)
    a("--eval-every", type=float, default=1.0, help="epochs between kNN evaluations (0: end only)")
    a(
        "--bank",
        choices=["subset", "full"],
        default="subset",
        help="kNN memory bank: the 10k balanced subset (same as the anchors) or all 60k",
    )
    a("--baselines", type=int, default=0, help="also report random-init and raw-pixel kNN")
    a(
        "--final-full-bank",
        type=int,
        default=0,
        help="at the end, also report trained / random-init / pixel kNN with the 60k train bank",
    )
    a("--max-minutes", type=float, default=0, help="stop training after this many minutes (0: off)")
    a("--tag", default="")
    return p.parse_args()


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    full = FashionMNIST(train=True)
    test = FashionMNIST(train=False)
    train_idx = (
        torch.arange(len(full))
        if args.train_size >= len(full)
        else balanced_subset(full.labels, args.train_size, args.seed)
    )
    images = full.images[train_idx]
    bank_idx = (
        torch.arange(len(full)) if args.bank == "full" else balanced_subset(full.labels, 10000, 0)
    )
    bank_images, bank_labels = full.images[bank_idx], full.labels[bank_idx]

    spec = ViewSpec(
        size=28,
        scale=tuple(args.scale),
        ratio=tuple(args.ratio),
        flip_p=args.flip,
        affine_p=args.affine_p,
        degrees=args.degrees,
        translate=args.translate,
        erase_p=args.erase_p,
        blur_p=args.blur_p,
        jitter=(args.jitter[0], args.jitter[1], 0.0, 0.0),
        jitter_p=args.jitter_p,
        intensity_on_gray=bool(args.intensity),
    )
    views = Views([spec, spec], channels=1, mean=MEAN, std=STD)
    backbone = SmallCNN(1, args.widths)
    head = ProjectionHead(backbone.out_dim, args.proj_hidden, args.proj_out, args.proj_layers)
    model = nn.Sequential(backbone, head)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)

    def knn(net: nn.Module) -> float:
        net = net.to(memory_format=mf)
        a = extract_features(net, bank_images, 1000, "cpu", MEAN, STD)
        b = extract_features(net, test.images, 1000, "cpu", MEAN, STD)
        return knn_accuracy(b, test.labels, a, bank_labels, k=200, temperature=0.1)

    result: dict = {"args": vars(args), "epochs": []}
    initial = copy.deepcopy(backbone)
    if args.baselines:
        result["random_init"] = knn(backbone)
        result["raw_pixels"] = knn_accuracy(
            pixel_features(test.images, MEAN, STD),
            test.labels,
            pixel_features(bank_images, MEAN, STD),
            bank_labels,
        )
        print(
            f"random init {result['random_init']:.2f}  raw pixels {result['raw_pixels']:.2f}",
            flush=True,
        )

    params = list(model.parameters())
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum)
    elif args.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=args.lr)
    else:
        opt = torch.optim.AdamW(groups, lr=args.lr)

    n = images.shape[0]
    steps_per_epoch = n // args.batch_size
    total = max(1, int(round(args.epochs * steps_per_epoch)))
    warm = int(args.warmup_epochs * steps_per_epoch)
    eval_steps = max(1, int(round(args.eval_every * steps_per_epoch))) if args.eval_every else 0

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        if args.schedule == "constant":
            return args.lr
        prog = (step - warm) / max(1, total - warm)
        return args.lr * 0.5 * (1 + math.cos(math.pi * prog))

    train_time = 0.0
    step = 0
    perm = torch.randperm(n)
    pos = 0
    losses: list[float] = []
    model.train()
    while step < total:
        t0 = time.perf_counter()
        if pos + args.batch_size > n:
            perm, pos = torch.randperm(n), 0
        idx = perm[pos : pos + args.batch_size]
        pos += args.batch_size
        v1, v2 = views(images[idx])
        x = torch.cat([v1, v2]).contiguous(memory_format=mf)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16)):
            z = model(x)
        z1, z2 = z.float().chunk(2)
        loss = nt_xent(z1, z2, args.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        train_time += time.perf_counter() - t0
        stop = args.max_minutes and train_time > args.max_minutes * 60
        if (eval_steps and step % eval_steps == 0) or step == total or stop:
            te = time.perf_counter()
            acc = knn(backbone)
            model.train()
            ep = step / steps_per_epoch
            row = {
                "epoch": round(ep, 2),
                "step": step,
                "knn": round(acc, 2),
                "loss": round(sum(losses) / len(losses), 4),
                "train_s": round(train_time, 1),
                "eval_s": round(time.perf_counter() - te, 1),
            }
            losses = []
            result["epochs"].append(row)
            print(json.dumps(row), flush=True)
        if stop:
            break
    if args.final_full_bank:
        te = time.perf_counter()
        bank_images, bank_labels = full.images, full.labels
        result["full_bank"] = {
            "trained": knn(backbone),
            "random_init": knn(initial),
            "raw_pixels": knn_accuracy(
                pixel_features(test.images, MEAN, STD),
                test.labels,
                pixel_features(full.images, MEAN, STD),
                full.labels,
            ),
            "eval_s": round(time.perf_counter() - te, 1),
        }
        print("full 60k bank: " + json.dumps(result["full_bank"]), flush=True)
    result["final_knn"] = result["epochs"][-1]["knn"]
    result["best_knn"] = max(r["knn"] for r in result["epochs"])
    result["train_s"] = round(train_time, 1)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
