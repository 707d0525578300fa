"""The ``pairsmith`` command: ``train``, ``eval``, ``list``, ``report``.

Heavy imports (Lightning, kornia, matplotlib) happen inside the commands, so ``--help`` and
``list`` stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pairsmith.app.config import ConfigError, section_keys

EPILOG_OVERRIDES = """\
overrides:
  Any config key can be set after the options as section.key=value; the value is read as
  YAML, so numbers, booleans, null and lists work:
      optim.lr=0.06  trainer.epochs=30  views.options.scale=[0.5,1.0]  data.subset=null
      method.options.temperature=0.2  eval.linear.enabled=true
  Mappings need a space after each colon, and quotes for the shell:
      'method.options={temperature: 0.2, proj_dim: 64}'
  Unknown keys are an error that lists the valid ones. Sections and their keys:
"""

ADVICE = """
advice:
  - On a few CPU cores keep data.num_workers=0: the data sits in memory as uint8 tensors and the
    augmentations run batched on the training device; worker processes only compete for cores.
  - On shared CPUs set trainer.num_threads=1 (2-4x faster per step than 2 threads on 2 busy
    cores), trainer.channels_last=true, and consider trainer.precision=bf16-mixed.
  - data.batch_size is the global batch; with --devices N each process gets batch_size / N.
  - The learning-rate schedule is per step (optim.warmup_epochs, then cosine over trainer.epochs
    or trainer.max_steps); optim.lr is not scaled by the batch size unless optim.lr_scaling says so.
  - trainer.diagnostics_every=1 computes the pair diagnostics at every step (about a tenth of a
    step on a small CNN); raise it for long runs.
  - Compare recipes interleaved and as ratios: the speed of shared machines drifts.
"""


def _sections_help() -> str:
    lines = []
    for s in ("data", "views", "model", "method", "optim", "trainer", "eval", "eval.linear"):
        lines.append(f"      {s}: {', '.join(section_keys(s))}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="pairsmith",
        description="Train and evaluate contrastive methods with curated positive/negative pairs.",
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a method from a YAML config",
        description=(
            "Train a method on the data of a config, checkpoint every epoch, log to CSV, evaluate "
            "kNN online every epoch and, at the end, kNN of the trained encoder next to the same "
            "encoder at random initialisation and raw pixels (RUN_DIR/results.json)."
        ),
        epilog=EPILOG_OVERRIDES + _sections_help() + "\n" + ADVICE + "\nexamples:\n"
        "  pairsmith train --config configs/default.yaml --out runs/simclr_fmnist\n"
        "  pairsmith train --out runs/simclr_fmnist --resume   # continue after an interruption",
        formatter_class=fmt,
    )
    t.add_argument(
        "--config", metavar="FILE",
        help="YAML config (configs/*.yaml). With --resume it defaults to RUN_DIR/config.yaml.",
    )  # fmt: skip
    t.add_argument(
        "--out", required=True, metavar="RUN_DIR",
        help="run directory: config.yaml, checkpoints/, logs/, results.json go there. A new "
        "run refuses a directory that already has checkpoints (use --resume or another name).",
    )  # fmt: skip
    t.add_argument(
        "--resume", action="store_true",
        help="continue from RUN_DIR/checkpoints/last.ckpt. Data order and augmentations are "
        "functions of (seed, epoch, step), so the continued run repeats the loss curve of an "
        "uninterrupted one.",
    )  # fmt: skip
    t.add_argument(
        "--data-root", metavar="DIR",
        help="folder of the data files (sets data.root). Fashion-MNIST is otherwise looked up in "
        "$PAIRSMITH_DATA then /usr/share/datasets/fashion-mnist.",
    )  # fmt: skip
    t.add_argument(
        "--devices", type=int, metavar="N",
        help="processes to train on (sets trainer.devices); on CPU N > 1 runs DDP over gloo. "
        "data.batch_size stays the global batch. BatchNorm statistics stay per process on CPU "
        "(no SyncBatchNorm), so losses match a single process only for BatchNorm-free models.",
    )  # fmt: skip
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    e = sub.add_parser(
        "eval",
        help="offline kNN / linear probe of a checkpoint",
        description=(
            "Evaluate a trained encoder from a checkpoint: weighted kNN (eval.knn_k, eval.knn_t) "
            "on the whole test split with the training split as memory bank, and a linear probe "
            "(logistic regression on frozen features). Writes the numbers under 'offline' in "
            "RUN_DIR/results.json."
        ),
        epilog="overrides (KEY=VALUE) change the saved config, e.g. eval.knn_k=20 data.root=DIR",
        formatter_class=fmt,
    )
    e.add_argument(
        "path", metavar="RUN_DIR_or_CKPT", help="a run directory (its last.ckpt) or a .ckpt"
    )
    e.add_argument("--data-root", metavar="DIR", help="folder of the data files (sets data.root)")
    e.add_argument(
        "--linear", action=argparse.BooleanOptionalAction, default=True,
        help="also fit the linear probe (eval.linear.* options; default on)",
    )  # fmt: skip
    e.add_argument(
        "--baselines", action="store_true",
        help="also evaluate the same encoder at random initialisation and raw pixels",
    )  # fmt: skip
    e.add_argument("--json", action="store_true", help="print the results as JSON")
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    ls = sub.add_parser(
        "list",
        help="list registered components (methods, curators, losses, sources)",
        description="Every registered component with its place in the survey's taxonomy "
        "(the same listing as `python -m pairsmith list`).",
    )
    ls.add_argument("--kind", choices=["curator", "loss", "method", "source"], default=None)

    r = sub.add_parser(
        "report",
        help="plot a run's logs to PNG files",
        description="Plot the loss, kNN accuracy, learning rate, the method's logs and every "
        "pair diagnostic of a run from its CSV logs (all versions, resumes merged by step).",
    )
    r.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    r.add_argument("--out", metavar="DIR", help="where to write the PNGs (default RUN_DIR/plots)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pairsmith`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            from pairsmith.__main__ import main as list_main

            return list_main(["list"] + (["--kind", args.kind] if args.kind else []))
        if args.command == "train":
            from pairsmith.app.train import train_from_args

            train_from_args(
                args.config, args.out, args.overrides, args.resume, args.data_root, args.devices
            )
            return 0
        if args.command == "eval":
            from pairsmith.app.evaluate import evaluate_checkpoint, format_results

            res = evaluate_checkpoint(
                args.path, args.overrides, args.data_root, args.linear, args.baselines
            )
            print(json.dumps(res, indent=2) if args.json else format_results(res))
            return 0
        if args.command == "report":
            from pairsmith.app.report import write_plots

            for f in write_plots(args.run_dir, args.out):
                print(f)
            return 0
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        print(f"pairsmith {args.command}: error: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
