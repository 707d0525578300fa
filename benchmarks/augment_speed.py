"""Throughput of batched views versus the same kornia ops applied one image at a time.

    python benchmarks/augment_speed.py [--batch 256] [--repeats 5] [--threads 2]

Both paths run the identical pipeline (the same `Views` module); the per-sample path calls it with
a batch of one image, as a per-sample transform in a DataLoader would. Prints images/s (each image
yields two views) and the batched/per-sample ratio for a grayscale 28x28 and an RGB 32x32 set-up.
"""

from __future__ import annotations

import argparse
import time

import torch

from pairsmith.data.views import SimCLRViews


def rate(fn, n_images: int, repeats: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return n_images * repeats / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--per-sample-images", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    print(f"{'set-up':<28}{'batched img/s':>15}{'per-sample img/s':>18}{'ratio':>8}")
    for name, c, s in (("grayscale 28x28 (F-MNIST)", 1, 28), ("RGB 32x32 (CIFAR)", 3, 32)):
        views = SimCLRViews(s, c)
        x = torch.randint(0, 256, (args.batch, c, s, s), dtype=torch.uint8)
        batched = rate(lambda: views(x), args.batch, args.repeats)  # noqa: B023
        m = args.per_sample_images

        def per_sample(views=views, x=x, m=m) -> None:
            for i in range(m):
                views(x[i : i + 1])

        single = rate(per_sample, m, max(1, args.repeats // 2))
        print(f"{name:<28}{batched:>15.0f}{single:>18.0f}{batched / single:>8.1f}")


if __name__ == "__main__":
    main()
