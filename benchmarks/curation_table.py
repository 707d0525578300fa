"""Every recipe under one equal budget: kNN accuracy, time per step and pair diagnostics.

Set-up (shared/reference/anchors.md, "Measured here"): the class-balanced 10,000-image
Fashion-MNIST training subset, the 4-block CNN (32-64-128-256, ``SmallCNN``), batch 256,
15 epochs, weighted kNN (k=200, T=0.1) of the L2-normalised backbone features, the 10k
training subset as memory bank and all 10,000 test images as queries. Augmentation,
optimiser, batch and epochs come from ``configs/curation_table.yaml`` (the main job's
first-round recipe at batch 256, frozen) through ``pairsmith.app.config.load_config`` when
present, else from that module's defaults (SimCLR
views, SGD lr 0.12, momentum 0.9, weight decay 5e-4, cosine schedule), so the numbers are
comparable with ``pairsmith train`` runs. Every recipe keeps its own defaults (its class
docstring says how they were scaled for this small-data set-up).

A plain PyTorch loop drives the recipes (``Method.training_step``, backward, optimiser step,
``after_optimizer_step``), **interleaved step by step**: at every step one batch of views
is drawn once (the same images, order and augmentations for every recipe: common random
numbers) and every recipe trains one step on it, in an order that rotates every step. A
shared machine's speed drifts by up to 1.7x within an hour, so each recipe's time per
step is reported as the median over steps of its ratio to SimCLR's time *at the same
step* (the views are drawn outside the timed region; the first steps are skipped as
warm-up). Each recipe's RNG is re-seeded per step, so its run does not depend on which
other recipes run beside it.

Diagnostics (``pairsmith.eval.diagnostics.pair_diagnostics``) are computed every
``--diag-every`` steps of the last epoch, outside the timed region, and averaged:
false-negative rate (share of negative weight on same-label candidates), NN-positive
precision (NNCLR's neighbours; FNC attraction's extra positives), FN-detection precision
(FNC), alignment and uniformity.

Output: one progress line per epoch, then a Markdown table; ``--json`` writes every number.

    python benchmarks/curation_table.py --quick          # 1 epoch, 2k images: a smoke test
    python benchmarks/curation_table.py                  # the full table (hours on 2 cores)
    python benchmarks/curation_table.py --recipes simclr simclr_fnc --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pairsmith.core.registry import create_method
from pairsmith.data.fashion_mnist import FashionMNIST, balanced_subset
from pairsmith.data.views import DATASET_STATS, MoCoV2Views, SimCLRViews, Views
from pairsmith.eval.diagnostics import average, pair_diagnostics
from pairsmith.eval.knn import extract_features, knn_accuracy, pixel_features
from pairsmith.methods.base import Method
from pairsmith.models import SmallCNN

RECIPES = (
    "simclr",
    "simclr_fnc",
    "simclr_fnc:mode=attraction",
    "simclr_dcl",
    "simclr_hcl",
    "supcon",
    "mocov2",
    "mocov2_mochi",
    "nnclr",
)
#: Recipes whose time per step should stay within 5 % of SimCLR's.
CURATED_SIMCLR = ("simclr_fnc", "simclr_dcl", "simclr_hcl", "supcon")
#: Recipes with a queue whose size must be a multiple of the keys pushed per step.
QUEUED = ("mocov2", "mocov2_mochi", "nnclr")
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- config
@dataclass
class MainConfig:
    """The parts of the main job's config this benchmark follows."""

    views_preset: str = "simclr"
    views_options: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    optim: str = "sgd"
    lr: float = 0.12
    lr_scaling: str = "none"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 0.0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    exclude_norm_bias: bool = False
    batch_size: int = 256
    epochs: int = 15
    channels: tuple[int, ...] = (32, 64, 128, 256)
    source: str = "built-in defaults"


def main_config(path: str | None) -> MainConfig:
    """Read the budget's config (``configs/curation_table.yaml`` if present)."""
    yaml_path = Path(path) if path else REPO / "configs" / "curation_table.yaml"
    try:
        from pairsmith.app.config import load_config
    except Exception as e:  # the app (or its extras) missing: mirror its defaults
        print(f"# pairsmith.app.config unavailable ({e}); using built-in defaults", flush=True)
        return MainConfig()
    cfg = load_config(yaml_path if yaml_path.exists() else None)
    o, v = cfg.optim, cfg.views
    widths = cfg.model.options.get("channels", (32, 64, 128, 256))
    return MainConfig(
        views_preset=v.preset,
        views_options=dict(v.options),
        mean=None if v.mean is None else tuple(v.mean),
        std=None if v.std is None else tuple(v.std),
        optim=o.name,
        lr=o.lr,
        lr_scaling=o.lr_scaling,
        weight_decay=o.weight_decay,
        momentum=o.momentum,
        nesterov=o.nesterov,
        betas=(float(o.betas[0]), float(o.betas[1])),
        warmup_epochs=o.warmup_epochs,
        schedule=o.schedule,
        min_lr_ratio=o.min_lr_ratio,
        exclude_norm_bias=o.exclude_norm_bias_from_wd,
        batch_size=cfg.data.batch_size,
        epochs=cfg.trainer.epochs,
        channels=tuple(int(c) for c in widths),
        source=str(yaml_path) if yaml_path.exists() else "pairsmith.app.config defaults",
    )


def build_views(mc: MainConfig, n_views: int) -> Views:
    """The main job's view pipeline at 28x28, one channel, Fashion-MNIST statistics."""
    mean, std = DATASET_STATS["fashion_mnist"]
    mean = mc.mean or mean
    std = mc.std or std
    if mc.views_preset == "mocov2":
        return MoCoV2Views(28, 1, mean, std, n_views=n_views, **mc.views_options)
    if mc.views_preset != "simclr":
        print(f"# views preset {mc.views_preset!r} not supported here; using simclr", flush=True)
    return SimCLRViews(28, 1, mean, std, n_views=n_views, **mc.views_options)


def build_optimizer(mc: MainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The main job's optimiser over the trainable parameters (momentum encoders excluded)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if mc.exclude_norm_bias:
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": mc.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": params, "weight_decay": mc.weight_decay}]
    if mc.optim == "sgd":
        return torch.optim.SGD(groups, lr=mc.lr, momentum=mc.momentum, nesterov=mc.nesterov)
    if mc.optim == "adam":
        return torch.optim.Adam(groups, lr=mc.lr, betas=mc.betas)
    return torch.optim.AdamW(groups, lr=mc.lr, betas=mc.betas)


def lr_at(mc: MainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine (or constant) to ``min_lr_ratio``, per step."""
    scale = {"none": 1.0, "linear": mc.batch_size / 256, "sqrt": math.sqrt(mc.batch_size / 256)}
    peak = mc.lr * scale.get(mc.lr_scaling, 1.0)
    warm = int(mc.warmup_epochs * steps_per_epoch)
    if step < warm:
        return peak * (step + 1) / warm
    if mc.schedule == "constant":
        return peak
    prog = (step - warm) / max(1, total - warm)
    floor = peak * mc.min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * prog))


# --------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One recipe being trained for one seed."""

    name: str
    method: Method
    opt: torch.optim.Optimizer
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    diags: list[dict[str, float]] = field(default_factory=list)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"simclr_fnc:mode=attraction,top_k=5"`` -> ``("simclr_fnc", {"mode": ..., "top_k": 5})``.

    Values are read as int, then float, then ``true``/``false``/``null``, else kept as text.
    """
    name, _, rest = spec.partition(":")
    opts: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, raw = item.partition("=")
        if not eq:
            raise SystemExit(f"recipe option {item!r} in {spec!r} must be key=value")
        value: Any = raw
        for conv in (int, float):
            try:
                value = conv(raw)
                break
            except ValueError:
                pass
        else:
            value = {"true": True, "false": False, "null": None}.get(raw.lower(), raw)
        opts[key] = value
    return name.removeprefix("methods."), opts


def recipe_options(spec: str, batch: int, queue_size: int) -> tuple[str, dict[str, Any]]:
    """Registry name and options of a recipe spec; queues get a multiple of the batch."""
    name, opts = parse_spec(spec)
    if name in QUEUED:
        opts.setdefault("queue_size", max(batch, (queue_size // batch) * batch))
    return name, opts


def knn_eval(
    backbone: nn.Module,
    bank: Tensor,
    bank_labels: Tensor,
    test: Tensor,
    test_labels: Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> float:
    """Weighted kNN (k=200, T=0.1) top-1 of the backbone's features, in %."""
    a = extract_features(backbone, bank, 1000, "cpu", mean, std)
    b = extract_features(backbone, test, 1000, "cpu", mean, std)
    return knn_accuracy(b, test_labels, a, bank_labels, k=200, temperature=0.1)


def train_seed(
    args: argparse.Namespace,
    mc: MainConfig,
    seed: int,
    images: Tensor,
    labels: Tensor,
    views: Views,
) -> dict[str, Run]:
    """Train every recipe for one seed, interleaved step by step."""
    runs: dict[str, Run] = {}
    for name in args.recipes:
        torch.manual_seed(seed)  # the same backbone initialisation for every recipe
        backbone = SmallCNN(1, mc.channels).to(memory_format=torch.channels_last)
        base, opts = recipe_options(name, mc.batch_size, args.queue_size)
        method = create_method(f"methods.{base}", backbone=backbone, **opts)
        method.train()
        runs[name] = Run(name, method, build_optimizer(mc, method))
    n = images.shape[0]
    b = mc.batch_size
    steps_per_epoch = n // b
    if steps_per_epoch == 0:
        raise SystemExit(f"--subset {n} is smaller than the batch size {b}")
    total = steps_per_epoch * args.epochs
    g = torch.Generator().manual_seed(seed)
    step = 0
    t_seed = time.perf_counter()
    for epoch in range(args.epochs):
        perm = torch.randperm(n, generator=g)
        last = epoch == args.epochs - 1
        for i in range(steps_per_epoch):
            idx = perm[i * b : (i + 1) * b]
            torch.manual_seed(1_000_003 * seed + step)
            v = [x.contiguous(memory_format=torch.channels_last) for x in views(images[idx])]
            keys = {"instance": idx.clone(), "label": labels[idx]}
            lr = lr_at(mc, step, total, steps_per_epoch)
            order = (
                args.recipes[step % len(args.recipes) :] + args.recipes[: step % len(args.recipes)]
            )
            for name in order:
                run = runs[name]
                torch.manual_seed(7_919 * seed + 104_729 * step + 1)
                for group in run.opt.param_groups:
                    group["lr"] = lr
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16)):
                    out = run.method.training_step(v, keys, step=step, epoch=epoch)
                run.opt.zero_grad(set_to_none=True)
                out.loss.backward()
                run.opt.step()
                run.method.after_optimizer_step(step=step, total_steps=total)
                run.times.append(time.perf_counter() - t0)
                run.losses.append(float(out.loss.detach()))
                if last and i % args.diag_every == 0:
                    run.diags.append(pair_diagnostics(out, keys))
            step += 1
        msg = " ".join(
            f"{r.name}={statistics.fmean(r.losses[-steps_per_epoch:]):.3f}" for r in runs.values()
        )
        print(
            f"# seed {seed} epoch {epoch + 1}/{args.epochs} ({time.perf_counter() - t_seed:.0f}s) "
            f"loss {msg}",
            flush=True,
        )
    return runs


def time_ratios(runs: dict[str, Run], skip: int) -> dict[str, float]:
    """Median over steps of each recipe's step time divided by SimCLR's at the same step."""
    if "simclr" not in runs:
        return {name: math.nan for name in runs}
    ref = runs["simclr"].times[skip:]
    out = {}
    for name, run in runs.items():
        t = run.times[skip:]
        ratios = [a / r for a, r in zip(t, ref, strict=True) if r > 0]
        out[name] = statistics.median(ratios) if ratios else math.nan
    return out


# --------------------------------------------------------------------------- table
def mean_spread(xs: list[float]) -> str:
    """``mean ± std`` (sample std over seeds; ``± –`` for a single seed)."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return "–"
    m = statistics.fmean(xs)
    return f"{m:.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{m:.2f} ± –"


def fmt(x: float, digits: int = 3) -> str:
    """A float, or an en dash for nan."""
    return "–" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def table(results: dict[str, Any]) -> str:
    """The Markdown table of :func:`main`'s results."""
    head = (
        "| recipe | kNN top-1 % (mean ± std) | time/step vs SimCLR | FN rate | "
        "NN-positive precision | FN detection precision | align | uniform |"
    )
    lines = [head, "|" + "---|" * 8]
    for name, r in results["recipes"].items():
        base = name.partition(":")[0]
        label = name + (" (uses labels)" if base == "supcon" else "")
        nn_prec = r["nn_precision"]
        if math.isnan(nn_prec):
            nn_prec = r["extra_pos_precision"] if base != "supcon" else math.nan
        ratio = fmt(r["time_ratio"], 3)
        if base in CURATED_SIMCLR and not math.isnan(r["time_ratio"]):
            ratio += " ✓" if r["time_ratio"] <= 1.05 else " ✗"
        lines.append(
            f"| {label} | {mean_spread(r['knn'])} | {ratio} | {fmt(r['fn_rate'])} | "
            f"{fmt(nn_prec)} | {fmt(r['fn_detection_precision'])} | {fmt(r['align'])} | "
            f"{fmt(r['uniform'])} |"
        )
    lines.append(f"| same CNN at random init | {mean_spread(results['random_init'])} | | | | | | |")
    lines.append(f"| raw pixels | {mean_spread([results['raw_pixels']])} | | | | | | |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    a = p.add_argument
    a(
        "--recipes",
        nargs="+",
        default=list(RECIPES),
        help="recipes: methods.<name>, optionally with options, e.g. simclr_fnc:mode=attraction",
    )
    a("--seeds", nargs="+", type=int, default=[0, 1], help="seeds (at least 2 for a spread)")
    a("--epochs", type=int, default=None, help="epochs (default: the main config's, 15)")
    a("--subset", type=int, default=10000, help="class-balanced training subset size")
    a("--test-subset", type=int, default=None, help="balanced test subset (default: all 10k)")
    a("--queue-size", type=int, default=4096, help="queue size of MoCo / MoCHi / NNCLR")
    a("--diag-every", type=int, default=5, help="steps between diagnostics (last epoch)")
    a("--skip-steps", type=int, default=3, help="warm-up steps left out of the time ratios")
    a(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1 is faster on 2 shared cores)",
    )
    a(
        "--bf16",
        type=int,
        default=1,
        help="1: bf16 autocast for the encoders as in the main job (the loss stays float32)",
    )
    a(
        "--config",
        default=None,
        help="views/optimiser/batch/epochs config (default: configs/curation_table.yaml)",
    )
    a("--data-root", default=None, help="folder with the Fashion-MNIST IDX files")
    a("--json", default=None, help="write every number to this JSON file")
    a("--quick", action="store_true", help="smoke test: 1 epoch, 2k images, 2k test images")
    args = p.parse_args(argv)
    args.recipes = [r.removeprefix("methods.") for r in args.recipes]
    if len(set(args.recipes)) != len(args.recipes):
        p.error("--recipes must not repeat a recipe")
    if args.quick:
        args.epochs = 1 if args.epochs is None else args.epochs
        args.subset = 2000
        args.test_subset = args.test_subset or 2000
    if args.diag_every < 1 or args.skip_steps < 0 or args.threads < 1:
        p.error("--diag-every and --threads must be >= 1, --skip-steps >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    mc = main_config(args.config)
    if args.epochs is None:
        args.epochs = mc.epochs
    t_start = time.perf_counter()
    full = FashionMNIST(root=args.data_root, train=True)
    test = FashionMNIST(root=args.data_root, train=False)
    idx = balanced_subset(full.labels, args.subset, 0)
    images, labels = full.images[idx], full.labels[idx]
    if args.test_subset:
        t_idx = balanced_subset(test.labels, args.test_subset, 0)
        test_images, test_labels = test.images[t_idx], test.labels[t_idx]
    else:
        test_images, test_labels = test.images, test.labels
    mean, std = DATASET_STATS["fashion_mnist"]
    mean, std = mc.mean or mean, mc.std or std
    n_views = max(
        create_method(f"methods.{b}", backbone=SmallCNN(1, (4,)), **o).num_views
        for b, o in (recipe_options(r, mc.batch_size, args.queue_size) for r in args.recipes)
    )
    views = build_views(mc, n_views)
    print(
        f"# {len(images)} training images, {len(test_images)} test images, batch "
        f"{mc.batch_size}, {args.epochs} epochs, seeds {args.seeds}, recipes {args.recipes}; "
        f"views {mc.views_preset} {mc.views_options}, {mc.optim} lr {mc.lr} wd "
        f"{mc.weight_decay} ({mc.source}); {args.threads} threads",
        flush=True,
    )

    raw = knn_accuracy(
        pixel_features(test_images, mean, std),
        test_labels,
        pixel_features(images, mean, std),
        labels,
        k=200,
        temperature=0.1,
    )
    per: dict[str, dict[str, list[float]]] = {r: {} for r in args.recipes}
    diags: dict[str, list[dict[str, float]]] = {r: [] for r in args.recipes}
    random_init: list[float] = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        random_init.append(
            knn_eval(SmallCNN(1, mc.channels), images, labels, test_images, test_labels, mean, std)
        )
        runs = train_seed(args, mc, seed, images, labels, views)
        ratios = time_ratios(runs, args.skip_steps)
        for name, run in runs.items():
            acc = knn_eval(run.method.backbone, images, labels, test_images, test_labels, mean, std)
            rec = per[name]
            rec.setdefault("knn", []).append(acc)
            rec.setdefault("time_ratio", []).append(ratios[name])
            rec.setdefault("ms_per_step", []).append(1000 * statistics.median(run.times))
            rec.setdefault("final_loss", []).append(run.losses[-1])
            diags[name].extend(run.diags)
        print(
            f"# seed {seed}: kNN "
            + " ".join(f"{n}={per[n]['knn'][-1]:.2f}" for n in args.recipes)
            + f" | random init {random_init[-1]:.2f} | raw pixels {raw:.2f}",
            flush=True,
        )

    results: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items()},
        "config": mc.__dict__,
        "raw_pixels": raw,
        "random_init": random_init,
        "recipes": {},
        "wall_s": 0.0,
    }
    for name in args.recipes:
        d = average(diags[name])
        results["recipes"][name] = {
            "knn": per[name]["knn"],
            "time_ratio": statistics.fmean(per[name]["time_ratio"]),
            "ms_per_step": per[name]["ms_per_step"],
            "final_loss": per[name]["final_loss"],
            **{
                k: d.get(k, math.nan)
                for k in (
                    "fn_rate",
                    "nn_precision",
                    "extra_pos_precision",
                    "fn_detection_precision",
                    "fn_detected_per_anchor",
                    "pos_sim",
                    "neg_sim",
                    "hardness",
                    "align",
                    "uniform",
                )
            },  # fmt: skip
            "diagnostics": d,
        }
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    print()
    print(table(results))
    print(
        f"\nkNN: weighted k=200, T=0.1, bank = the {len(images)} training images, queries = "
        f"{len(test_images)} test images; ± is the sample std over seeds {args.seeds}. "
        "Time/step: median per-step ratio to SimCLR (interleaved), mean over seeds; ✓/✗ "
        "against the 1.05 target for curated SimCLR variants. Diagnostics: mean over the last "
        f"epoch (every {args.diag_every} steps). Wall time {results['wall_s']:.0f} s."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return results


def merge(paths: list[str]) -> dict[str, Any]:
    """Combine the JSON files of runs over different seeds (run in parallel) into one table.

    kNN lists are concatenated; time ratios and diagnostics are averaged over the files.
    """
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    out: dict[str, Any] = {
        "raw_pixels": first["raw_pixels"],
        "random_init": [x for p in parts for x in p["random_init"]],
        "recipes": {},
        "wall_s": max(p["wall_s"] for p in parts),
        "merged_from": paths,
    }
    for name in first["recipes"]:
        recs = [p["recipes"][name] for p in parts]
        merged = {
            k: statistics.fmean(r[k] for r in recs) for k in recs[0] if _is_number(recs[0][k])
        }
        merged["knn"] = [x for r in recs for x in r["knn"]]
        out["recipes"][name] = merged
    print(table(out))
    seeds = [s for p in parts for s in p["args"]["seeds"]]
    print(
        f"\nMerged {len(paths)} runs (seeds {seeds}, {first['args']['epochs']} epochs, run in "
        f"parallel); wall time {out['wall_s']:.0f} s (the longest run)."
    )
    return out


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--merge"]:
        merge(sys.argv[2:])
    else:
        main(sys.argv[1:])
