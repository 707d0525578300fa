"""Speed and peak memory of the InfoNCE family against a naive dense NT-Xent (CPU).

Layout of every configuration (B anchors, M candidates, D = 128): the B anchors are the two
views of B/2 samples (SimCLR); the candidates are those B views (a ``batch`` segment, each
anchor's own column masked) followed by M - B queue rows (a ``queue`` segment, MoCo-style
negatives). The positive of anchor i is the other view of its sample.

* ``naive``: written here. ``logits = a @ c.T / tau``, self column set to -inf,
  ``cross_entropy`` to the positive column. One dense ``[B, M]`` block with gradient.
* ``ours``: :func:`pairsmith.info_nce` on ``Pairs.from_views([z1, z2], keys, extra=(queue,))``
  with the default ``chunk_size="auto"`` (row blocks under activation checkpointing once
  ``B * M > 2**24``).
* family members (ours only): ``positives_in_denominator`` "self" and "none" (decoupled),
  ``aggregate="log_mean"`` (SupCon L_in) and SupCon L_out (``SameKey("label")``, 10 classes,
  positives reaching into the queue).
* curators: every registered curator (``list_entries("curator")``, built with defaults),
  applied to the same pairs (batch + queue segments, keys ``instance`` and ``label``)
  inside the timed region, reported as a time ratio to plain NT-Xent.

Timing: forward + backward, ``torch.set_num_threads(2)``; implementations are interleaved
inside every repeat (the order rotates) and medians are reported, because a shared
machine's speed drifts. One untimed warm-up per implementation and configuration.

Peak memory: ``tracemalloc`` does not see torch's allocations, so every (implementation,
configuration) runs once more in a fresh subprocess: it builds the inputs, runs the same
implementation once on a tiny problem (so lazy imports and kernel set-up are not counted),
resets the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``), takes the current
RSS as the baseline, runs forward + backward once, and reports the peak RSS (``VmHWM`` in
``/proc/self/status``) minus the baseline: the peak resident memory of the loss above its
inputs (its working memory, gradients included). ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
is not used: it also carries the high-water mark of the memory map the process had at
``exec``, i.e. the parent benchmark's (Python spawns via ``vfork``), which inflated the small
configurations by the parent's size in a first run. Without ``/proc`` it falls back to the
``ru_maxrss`` growth, a lower bound. The child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so
that glibc unmaps freed blocks at once and RSS follows the live tensors (without it, blocks
of up to 32 MiB freed by one row block stay resident: allocator retention, not the loss).

    python benchmarks/loss_speed.py                      # everything (~1 h on 2 busy cores)
    python benchmarks/loss_speed.py --configs 256x4096 --repeats 9 --no-memory
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pairsmith import Pairs, SameKey, Segment, info_nce
from pairsmith.core.registry import create_curator, list_entries

D = 128
TAU = 0.1
NUM_LABELS = 10
DEFAULT_CONFIGS = ("256x4096", "256x65536", "1024x4096", "1024x65536", "4096x4096", "4096x65536")
FAMILY = ("ntxent", "self", "none", "log_mean", "supcon")
GIB = 1 << 30


# --------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    """One configuration's tensors: ``z [B, D]`` (leaf, grad) and the queue ``[M - B, D]``."""

    z: Tensor
    queue: Tensor
    instance: Tensor
    label: Tensor
    queue_instance: Tensor
    queue_label: Tensor


def make_inputs(b: int, m: int, seed: int = 0) -> Inputs:
    if b % 2 or m < b:
        raise SystemExit(f"need an even B <= M, got B={b}, M={m}")
    g = torch.Generator().manual_seed(seed)
    n = b // 2
    z = F.normalize(torch.randn(b, D, generator=g), dim=1).requires_grad_()
    queue = F.normalize(torch.randn(m - b, D, generator=g), dim=1)
    label = torch.randint(0, NUM_LABELS, (n,), generator=g)
    return Inputs(
        z=z,
        queue=queue,
        instance=torch.arange(n),
        label=label,
        queue_instance=torch.full((m - b,), -1, dtype=torch.long),
        queue_label=torch.randint(0, NUM_LABELS, (m - b,), generator=g),
    )


def make_pairs(x: Inputs) -> Pairs:
    n = x.z.shape[0] // 2
    keys = {"instance": x.instance, "label": x.label}
    queue = Segment("queue", x.queue, {"instance": x.queue_instance, "label": x.queue_label})
    return Pairs.from_views([x.z[:n], x.z[n:]], keys, extra=(queue,))


# --------------------------------------------------------------------------- losses
def naive_loss(x: Inputs) -> Tensor:
    """Dense NT-Xent with a queue: the textbook implementation."""
    b = x.z.shape[0]
    n = b // 2
    c = torch.cat([x.z, x.queue])
    logits = x.z @ c.T / TAU
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[:, :b].fill_diagonal_(True)
    logits = logits.masked_fill(self_mask, float("-inf"))
    target = (torch.arange(b) + n) % b
    return F.cross_entropy(logits, target)


def family_loss(variant: str) -> Callable[[Inputs], Tensor]:
    def run(x: Inputs) -> Tensor:
        pairs = make_pairs(x)
        if variant == "ntxent":
            return info_nce(pairs, TAU).loss
        if variant in ("self", "none"):
            return info_nce(pairs, TAU, positives_in_denominator=variant).loss
        if variant == "log_mean":
            return info_nce(pairs, TAU, aggregate="log_mean").loss
        if variant == "supcon":
            return info_nce(pairs.replace(positives=SameKey("label")), TAU).loss
        raise SystemExit(f"unknown family member {variant!r}")

    return run


def curator_loss(name: str) -> Callable[[Inputs], Tensor]:
    curator = create_curator(name)

    def run(x: Inputs) -> Tensor:
        return info_nce(curator(make_pairs(x)), TAU).loss

    return run


def implementation(name: str) -> Callable[[Inputs], Tensor]:
    if name == "naive":
        return naive_loss
    if name.startswith("curator:"):
        return curator_loss(name.split(":", 1)[1])
    return family_loss(name)


def step(fn: Callable[[Inputs], Tensor], x: Inputs) -> None:
    x.z.grad = None
    fn(x).backward()


# --------------------------------------------------------------------------- timing
def time_interleaved(
    impls: dict[str, Callable[[Inputs], Tensor]], x: Inputs, repeats: int
) -> dict[str, float]:
    """Median seconds of forward + backward per implementation, interleaved per repeat."""
    names = list(impls)
    for name in names:  # warm-up (lazy imports, allocator)
        step(impls[name], x)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            t0 = time.perf_counter()
            step(impls[name], x)
            samples[name].append(time.perf_counter() - t0)
    return {n: statistics.median(s) for n, s in samples.items()}


# --------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (and so ``ru_maxrss``) to the current RSS (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    """``VmHWM``, the peak RSS of this process's memory map, from ``/proc/self/status``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure_child(impl: str, b: int, m: int) -> None:
    """Run in a fresh process: print the peak-RSS growth (bytes) of one step as JSON."""
    torch.set_num_threads(2)
    fn = implementation(impl)
    step(fn, make_inputs(8, 64))
    if impl != "naive":  # trigger the chunked path's lazy imports too
        tiny = make_inputs(8, 64)
        info_nce(make_pairs(tiny), TAU, chunk_size=4).loss.backward()
    x = make_inputs(b, m)
    gc.collect()
    reset = _reset_peak() and _peak_rss_bytes() is not None
    if reset:
        # VmHWM restarts from the current RSS. ru_maxrss cannot be used here: it is the
        # maximum of VmHWM and the high-water mark of the memory map this process had
        # when it exec'd, which is the *parent's* when Python spawns through vfork.
        before = _rss_bytes()
        step(fn, x)
        after = _peak_rss_bytes() or 0
    else:  # no reset: the old high-water mark hides any lower peak (a lower bound)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step(fn, x)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_bytes": max(0, after - before), "exact": reset}))


def peak_memory(impl: str, b: int, m: int) -> float | None:
    """Peak working memory in bytes, measured in a subprocess (None if it failed)."""
    cmd = [sys.executable, __file__, "--measure-child", impl, str(b), str(m)]
    # A fixed mmap threshold makes glibc return every freed block over 64 KiB to the system,
    # so the RSS peak is the peak of live tensors; with glibc's dynamic threshold (up to
    # 32 MiB) freed row blocks stay in the heap and the same run read 370 to 880 MiB.
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", **os.environ}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"  memory run failed for {impl} {b}x{m}: {proc.stderr.strip()[-300:]}")
        return None
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])


def naive_estimate(b: int, m: int) -> float:
    """Bytes the naive loss holds at its peak: about four float32 [B, M] matrices."""
    return 4.0 * b * m * 4


def available_memory() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


# --------------------------------------------------------------------------- main
def fmt_mem(x: float | None) -> str:
    return "n/a" if x is None else f"{x / (1 << 20):.0f} MiB"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def parse_config(s: str) -> tuple[int, int]:
    b, m = s.lower().split("x")
    return int(b), int(m)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="BxM, e.g. 256x4096")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per implementation")
    p.add_argument("--big-repeats", type=int, default=3, help="repeats when B*M >= 2**27")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-memory", action="store_true", help="skip the subprocess memory runs")
    p.add_argument(
        "--naive-max-gib", type=float, default=6.0,
        help="skip the naive loss when its estimated peak exceeds this (or half the free RAM)",
    )  # fmt: skip
    p.add_argument("--curator-config", default="256x4096", help="BxM for the curator table")
    p.add_argument("--curator-repeats", type=int, default=9)
    p.add_argument("--measure-child", nargs=3, metavar=("IMPL", "B", "M"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure_child:
        impl, b, m = args.measure_child
        measure_child(impl, int(b), int(m))
        return
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D={D}, tau={TAU}")
    print(f"command: python benchmarks/loss_speed.py {' '.join(sys.argv[1:])}".rstrip())

    rows = []
    for cfg in args.configs:
        b, m = parse_config(cfg)
        x = make_inputs(b, m)
        impls = {name: implementation(name) for name in FAMILY}
        est = naive_estimate(b, m)
        naive_ok = est <= args.naive_max_gib * GIB and est <= available_memory() / 2
        if naive_ok:
            impls = {"naive": naive_loss, **impls}
        repeats = args.big_repeats if b * m >= 1 << 27 else args.repeats
        t = time_interleaved(impls, x, repeats)
        mem: dict[str, float | None] = {}
        if not args.no_memory:
            for name in ["naive", "ntxent"] if naive_ok else ["ntxent"]:
                mem[name] = peak_memory(name, b, m)
            if b * m >= 1 << 28:  # the memory target: every family member at the largest size
                for name in FAMILY[1:]:
                    mem[name] = peak_memory(name, b, m)
        row = {"B": b, "M": m, "time": t, "mem": mem, "naive_ok": naive_ok, "naive_est": est}
        rows.append(row)
        print(json.dumps(row))
        del x
        gc.collect()

    print("\n### NT-Xent: ours vs naive dense (forward + backward, medians)\n")
    print("| B | M | naive time | ours time | time ratio | naive peak | ours peak | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, mem = r["time"], r["mem"]
        naive_t = t.get("naive")
        naive_m = mem.get("naive")
        naive_t_s = (
            f"{naive_t * 1e3:.1f} ms"
            if naive_t
            else f"skipped (needs ~{r['naive_est'] / GIB:.1f} GiB)"
        )
        ours_m = mem.get("ntxent")
        print(
            f"| {r['B']} | {r['M']} | {naive_t_s} | {t['ntxent'] * 1e3:.1f} ms | "
            f"{fmt_ratio(t['ntxent'], naive_t)} | {fmt_mem(naive_m)} | {fmt_mem(ours_m)} | "
            f"{fmt_ratio(ours_m, naive_m)} |"
        )

    print("\n### InfoNCE family (ours): time in ms, ratio to our NT-Xent in brackets\n")
    print("| B | M | " + " | ".join(FAMILY) + " |")
    print("|---|---|" + "---|" * len(FAMILY))
    for r in rows:
        t = r["time"]
        cells = [f"{t[f] * 1e3:.1f} ({t[f] / t['ntxent']:.2f})" for f in FAMILY]
        print(f"| {r['B']} | {r['M']} | " + " | ".join(cells) + " |")
    big = [r for r in rows if len(r["mem"]) > 2 or (not r["naive_ok"] and r["mem"])]
    for r in big:
        print(f"\nPeak memory at B={r['B']}, M={r['M']}: "
              + ", ".join(f"{k} {fmt_mem(v)}" for k, v in r["mem"].items()))  # fmt: skip

    curator_table(args)


def curator_table(args: argparse.Namespace) -> None:
    b, m = parse_config(args.curator_config)
    x = make_inputs(b, m)
    impls: dict[str, Callable[[Inputs], Tensor]] = {"ntxent": family_loss("ntxent")}
    failed: dict[str, str] = {}
    for entry in list_entries("curator"):
        try:
            fn = curator_loss(entry.name)
            step(fn, x)
        except Exception as e:  # noqa: BLE001 - report and continue
            failed[entry.name] = f"{type(e).__name__}: {e}"
            continue
        impls[entry.name] = fn
    t = time_interleaved(impls, x, args.curator_repeats)
    print(f"\n### Curators at B={b}, M={m} (batch + queue): time ratio to plain NT-Xent\n")
    print("| curator | time | ratio to NT-Xent |")
    print("|---|---|---|")
    print(f"| (plain NT-Xent) | {t['ntxent'] * 1e3:.1f} ms | 1.00 |")
    for name in impls:
        if name != "ntxent":
            print(f"| {name} | {t[name] * 1e3:.1f} ms | {t[name] / t['ntxent']:.2f} |")
    for name, msg in failed.items():
        print(f"| {name} | n/a | failed with defaults: {msg[:120]} |")


if __name__ == "__main__":
    main()
