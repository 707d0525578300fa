"""Distributed gather and pairs: single-process unit tests and two-process DDP equivalence.

The DDP tests spawn two gloo processes on CPU once per module (every variant runs inside
the same two processes to keep the suite fast). Each rank holds half of a fixed global
batch, wraps a tiny MLP in DistributedDataParallel, builds its pairs with
``distributed_pairs`` (rows local, columns global), computes the loss with ``info_nce``
and backpropagates. One process on the whole batch must give the same loss (the global
mean) and the same parameter gradients, in float64.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from pairsmith import Dense, Pairs, SameKey, Segment, TopK, Union, info_nce
from pairsmith.core import distributed as D
from pairsmith.core.registry import create_curator, list_curators
from pairsmith.functional.infonce import log_weights
from pairsmith.sources.queue import Queue

WORLD = 2
N_GLOBAL = 12  # samples in the global batch; each rank holds N_GLOBAL // WORLD
IN_DIM, OUT_DIM = 6, 8
TAU = 0.5
ATOL = 1e-6

# Curators written by other engineers, tried when registered (looked up by last name part).
# MoCHi is left out: its mixing coefficients are random draws per anchor row, so a rank
# holding half the rows draws different numbers than one process holding all of them.
REGISTRY_CURATORS = ("dcl", "hcl", "fnc", "supcon", "nnclr")
# Estimators (DCL, HCL) are defined with positives_in_denominator="self".
ESTIMATOR_CURATORS = ("dcl", "hcl")

FIXED_VARIANTS = (
    "ntxent",  # instance positives, per-rank global_mean
    "ntxent_local_mean",  # plain local mean (exact because valid counts are equal)
    "ntxent_chunked",  # checkpointed row blocks under DDP
    "ntxent_swapped",  # rank r holds the other half: order-independent, no rank arithmetic
    "ntxent_nograd_candidates",  # candidates gathered without gradient
    "supcon",  # SameKey("label") with unknown labels: unequal valid counts per rank
    "supcon_log_mean",
    "topk_nn_positive",  # NNCLR-like TopK positive found on the global columns
    "dense_negatives",  # Dense importance weights on the negatives
    "queue_supcon",  # extra queue segment, label positives reach into the queue
    "estimator",  # a differentiable denominator estimator written here
    "moco",  # gathered momentum keys (no grad) + queue; queue push with gathered keys
)


# --------------------------------------------------------------------------- fixtures
def _encoder(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN_DIM, 16), nn.Tanh(), nn.Linear(16, OUT_DIM)).double()


def _data() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(N_GLOBAL, IN_DIM, generator=g, dtype=torch.float64)
    x2 = x1 + 0.3 * torch.randn(N_GLOBAL, IN_DIM, generator=g, dtype=torch.float64)
    # Non-contiguous, permuted dataset indices: nothing may assume ids follow ranks.
    instance = torch.randperm(500, generator=g)[:N_GLOBAL] * 3 + 7
    # Unknown labels (-1) only on the first half: ranks get unequal valid-anchor counts.
    label = torch.tensor([0, -1, 1, -1, 2, -1, 0, 1, 2, 1, 0, 2])
    q_emb = F.normalize(torch.randn(10, OUT_DIM, generator=g, dtype=torch.float64), dim=1)
    q_inst = 10_000 + torch.arange(10)
    q_label = torch.tensor([0, 1, 2, 0, 1, 2, -1, 0, 1, 2])
    return {
        "x1": x1, "x2": x2, "instance": instance, "label": label,
        "q_emb": q_emb, "q_instance": q_inst, "q_label": q_label,
    }  # fmt: skip


def _registry_name(short: str) -> str | None:
    names = [n for n in list_curators() if n.rsplit(".", 1)[-1] == short]
    return names[0] if names else None


# --------------------------------------------------------------------------- the variants
def _compute(
    variant: str,
    model: nn.Module,
    momentum: nn.Module,
    data: dict[str, Tensor],
    rows: slice,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss to backpropagate (per rank) and extra tensors to compare, for one variant.

    ``rows`` selects this process's part of the global batch (everything in one process).
    The same code runs in one process (where distributed_pairs is Pairs.from_views) and
    under DDP.
    """
    x1, x2 = data["x1"][rows], data["x2"][rows]
    keys = {"instance": data["instance"][rows], "label": data["label"][rows]}
    queue_seg = Segment(
        "queue", data["q_emb"], {"instance": data["q_instance"], "label": data["q_label"]}
    )
    extra: dict[str, Tensor] = {}

    if variant == "moco":
        q = F.normalize(model(x1), dim=1)
        with torch.no_grad():
            k = F.normalize(momentum(x2), dim=1)
        batch = D.gather_segment("batch", k, keys)
        pairs = Pairs(q, keys, (batch, queue_seg), positives=SameKey("instance"))
        out = info_nce(pairs, TAU)
        queue = Queue(16, OUT_DIM, keys=("instance", "label"))
        queue.push(batch.embeddings, batch.keys)
        extra = {"queue": queue.embeddings.clone(), "queue_instance": queue.key_instance.clone()}
        return D.global_mean(out.losses, out.valid), extra

    z1, z2 = F.normalize(model(torch.cat([x1, x2])), dim=1).chunk(2)
    mode, aggregate, chunk = "all", "mean_log", None
    if variant in ("ntxent", "ntxent_local_mean", "ntxent_chunked", "ntxent_swapped"):
        pairs = D.distributed_pairs([z1, z2], keys)
        chunk = 5 if variant == "ntxent_chunked" else None
    elif variant == "ntxent_nograd_candidates":
        pairs = D.distributed_pairs([z1, z2], keys, grad=False)
    elif variant in ("supcon", "supcon_log_mean"):
        pairs = D.distributed_pairs([z1, z2], keys, positives=SameKey("label"))
        aggregate = "log_mean" if variant == "supcon_log_mean" else "mean_log"
    elif variant == "topk_nn_positive":
        pairs = D.distributed_pairs([z1, z2], keys)
        with torch.no_grad():
            sim = pairs.anchors @ pairs.candidates.T
            taken = pairs.dense_positives() > 0
            taken[torch.arange(pairs.num_anchors), pairs.self_index] = True
            nn_col = sim.masked_fill(taken, -math.inf).argmax(dim=1, keepdim=True)
        pairs = pairs.replace(positives=Union(SameKey("instance"), TopK(nn_col)))
        mode = "self"
    elif variant == "dense_negatives":
        pairs = D.distributed_pairs([z1, z2], keys)
        with torch.no_grad():
            w = torch.exp(2.0 * pairs.anchors @ pairs.candidates.T)
        pairs = pairs.replace(negatives=Dense(w))
    elif variant == "queue_supcon":
        pairs = D.distributed_pairs([z1, z2], keys, SameKey("label"), extra=(queue_seg,))
    elif variant == "estimator":
        pairs = D.distributed_pairs([z1, z2], keys, extra=(queue_seg,))
        pairs = pairs.replace(estimator=_toy_estimator)
        mode = "self"
    elif variant.startswith("registry:"):
        pairs = D.distributed_pairs([z1, z2], keys, extra=(queue_seg,))
        name = variant.split(":", 1)[1]
        pairs = create_curator(name)(pairs)
        mode = "self" if name.rsplit(".", 1)[-1] in ESTIMATOR_CURATORS else "all"
    else:  # pragma: no cover - a typo in the variant list
        raise AssertionError(variant)

    out = info_nce(pairs, TAU, mode, aggregate, chunk_size=chunk)  # type: ignore[arg-type]
    if variant == "ntxent_local_mean":
        return out.loss, extra
    return D.global_mean(out.losses, out.valid), extra


def _toy_estimator(
    logits: Tensor, neg_weight: Tensor, temperature: float, rows: Tensor, cols: Tensor
) -> Tensor:
    """A differentiable denominator that depends on the whole row (as DCL/HCL's do)."""
    mass = torch.logsumexp(logits + log_weights(neg_weight.to(logits.dtype)), dim=1)
    return (mass + 0.1 * torch.tanh(logits.mean(dim=1)))[rows] + 0.01 * logits[rows, cols]


def _run(variant: str, rows: slice, distributed: bool) -> dict[str, Tensor]:
    model, momentum = _encoder(0), _encoder(1)
    for p in momentum.parameters():
        p.requires_grad_(False)
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if distributed else model
    loss, extra = _compute(variant, net, momentum, _data(), rows)
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]
    return {
        "loss": D.mean_over_ranks(loss),
        "grads": torch.cat([g.flatten() for g in grads]),
        **extra,
    }


# --------------------------------------------------------------------------- the workers
def _worker(rank: int, port: int, out_dir: str, variants: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        n = N_GLOBAL // WORLD
        results: dict[str, Any] = {}
        for v in variants:
            part = WORLD - 1 - rank if v == "ntxent_swapped" else rank
            results[v] = _run(v, slice(part * n, (part + 1) * n), distributed=True)
        results["checks"] = _checks(rank, n)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    except Exception:
        Path(out_dir, f"error{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _checks(rank: int, n: int) -> dict[str, Any]:
    """Direct checks of the gather functions under two processes."""
    data = _data()
    rows = slice(rank * n, (rank + 1) * n)
    out: dict[str, Any] = {
        "is_distributed": D.is_distributed(),
        "world_size": D.world_size(),
        "rank": D.rank(),
    }
    keys = {"instance": data["instance"][rows], "label": data["label"][rows].int()}
    out["gathered_keys"] = D.gather_keys(keys)

    # Gradient of a gathered tensor: every rank weights the gathered rows differently;
    # each rank's rows must receive the sum over ranks of the weights on those rows.
    x = torch.full((2, 3), float(rank + 1), dtype=torch.float64, requires_grad=True)
    y = D.gather(x, grad=True)
    weights = torch.arange(y.numel(), dtype=torch.float64).reshape(y.shape) * (rank + 1)
    (y * weights).sum().backward()
    out["gather_value"] = y.detach()
    out["gather_grad"] = x.grad
    out["gather_nograd_requires_grad"] = D.gather(x, grad=False).requires_grad

    # Pairs: every anchor's own column holds the anchor itself.
    z = F.normalize(torch.randn(n, 4, dtype=torch.float64), dim=1)
    pairs = D.distributed_pairs([z, z + 1], {"instance": data["instance"][rows]})
    own = pairs.candidates[pairs.self_index]
    out["self_column_is_anchor"] = bool(torch.equal(own, pairs.anchors))
    out["candidate_instance"] = pairs.candidate_keys["instance"]
    out["self_index"] = pairs.self_index

    def error(fn: Callable[[], object]) -> str:
        try:
            fn()
        except ValueError as e:
            return str(e)
        return ""

    out["unequal_error"] = error(lambda: D.gather(torch.zeros(3 + rank, 2), grad=True))
    dup = {"instance": torch.arange(n)}  # the same ids on both ranks
    out["duplicate_error"] = error(lambda: D.distributed_pairs([z], dup))
    # Per-rank loss scaling: W * local sum / global valid count.
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    valid = torch.tensor([True, rank == 0, False])
    out["global_mean"] = D.global_mean(losses, valid)
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Single-process references, then one two-process run of every runnable variant."""
    variants = list(FIXED_VARIANTS)
    skipped: dict[str, str] = {}
    for short in REGISTRY_CURATORS:
        name = _registry_name(short)
        if name is None:
            skipped[short] = f"no curator named *.{short} is registered yet ({list_curators()})"
            continue
        try:
            create_curator(name)
        except TypeError as e:
            skipped[short] = f"{name} cannot be built with defaults: {e}"
            continue
        variants.append(f"registry:{name}")
    full = slice(0, N_GLOBAL)
    reference: dict[str, dict[str, Tensor]] = {}
    for v in variants:
        try:
            reference[v] = _run("ntxent" if v == "ntxent_swapped" else v, full, False)
        except ValueError as e:
            if not v.startswith("registry:"):
                raise
            skipped[v.rsplit(".", 1)[-1]] = f"{v} does not apply to batch+queue pairs: {e}"
    runnable = [v for v in variants if v in reference]
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir), runnable), nprocs=WORLD, join=True)
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"reference": reference, "ranks": ranks, "skipped": skipped}


# --------------------------------------------------------------------------- DDP tests
def _variant_key(ddp: dict[str, Any], variant: str) -> str:
    if not variant.startswith("registry-"):
        return variant
    short = variant.removeprefix("registry-")
    if short in ddp["skipped"]:
        pytest.skip(ddp["skipped"][short])
    name = _registry_name(short)
    assert name is not None
    return f"registry:{name}"


@pytest.mark.ddp
@pytest.mark.parametrize(
    "variant", [*FIXED_VARIANTS, *(f"registry-{short}" for short in REGISTRY_CURATORS)]
)
def test_ddp_matches_single_process(ddp: dict[str, Any], variant: str) -> None:
    key = _variant_key(ddp, variant)
    ref = ddp["reference"][key]
    for r, res in enumerate(ddp["ranks"]):
        got = res[key]
        assert torch.allclose(got["loss"], ref["loss"], atol=ATOL, rtol=0), (
            r,
            got["loss"],
            ref["loss"],
        )
        err = (got["grads"] - ref["grads"]).abs().max().item()
        assert err <= ATOL, f"rank {r}: max gradient difference {err}"
        assert ref["grads"].abs().max() > 1e-3  # the comparison is not vacuous


@pytest.mark.ddp
def test_ddp_unequal_valid_counts_need_global_mean(ddp: dict[str, Any]) -> None:
    # The supcon variant has unknown labels on rank 0's half only: its check above is
    # meaningful only if the ranks really have different numbers of valid anchors.
    labels = _data()["label"]
    n = N_GLOBAL // WORLD
    assert (labels[:n] >= 0).sum() != (labels[n:] >= 0).sum()


@pytest.mark.ddp
def test_ddp_moco_queues_identical_across_ranks(ddp: dict[str, Any]) -> None:
    ref = ddp["reference"]["moco"]
    for res in ddp["ranks"]:
        assert torch.allclose(res["moco"]["queue"], ref["queue"], atol=1e-12)
        assert torch.equal(res["moco"]["queue_instance"], ref["queue_instance"])


@pytest.mark.ddp
def test_ddp_gather_functions(ddp: dict[str, Any]) -> None:
    data = _data()
    n = N_GLOBAL // WORLD
    for r, res in enumerate(ddp["ranks"]):
        c = res["checks"]
        assert c["is_distributed"] and c["world_size"] == WORLD and c["rank"] == r
        assert torch.equal(c["gathered_keys"]["instance"], data["instance"])
        assert torch.equal(c["gathered_keys"]["label"], data["label"])
        assert c["gathered_keys"]["label"].dtype == torch.long
        # Value: rank order. Gradient: sum over ranks of each rank's weights on my rows.
        expected = torch.cat([torch.full((2, 3), float(k + 1)) for k in range(WORLD)]).double()
        assert torch.equal(c["gather_value"], expected)
        base = torch.arange(2 * 3 * WORLD, dtype=torch.float64).reshape(2 * WORLD, 3)
        total = base * sum(k + 1 for k in range(WORLD))
        assert torch.equal(c["gather_grad"], total[2 * r : 2 * r + 2])
        assert c["gather_nograd_requires_grad"] is False
        assert c["self_column_is_anchor"]
        assert torch.equal(c["candidate_instance"], data["instance"].repeat(2))
        expected_self = torch.cat([torch.arange(n) + r * n + v * N_GLOBAL for v in range(2)])
        assert torch.equal(c["self_index"], expected_self)
        assert "same shape on every rank" in c["unequal_error"]
        assert "unique over the global batch" in c["duplicate_error"]
        # W * local sum / global valid count = 2 * (1 + 2) / 3 on rank 0, 2 * 1 / 3 on rank 1.
        assert torch.allclose(c["global_mean"], torch.tensor((6.0 if r == 0 else 2.0) / 3).double())


# --------------------------------------------------------------------------- single process
def _views(n: int = 5, d: int = 4, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1),
        F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1),
    )


def test_single_process_helpers() -> None:
    assert not D.is_distributed()
    assert D.world_size() == 1 and D.rank() == 0
    x = torch.randn(3, 2, requires_grad=True)
    assert D.gather(x, grad=True) is x
    y = D.gather(x, grad=False)
    assert not y.requires_grad and torch.equal(y, x)
    k = D.gather_keys({"label": torch.tensor([1, 2, 3], dtype=torch.int32)})
    assert k["label"].dtype == torch.long and k["label"].tolist() == [1, 2, 3]
    assert D.gather_keys({}) == {}
    seg = D.gather_segment("gathered", x, {"instance": torch.arange(3)})
    assert seg.name == "gathered" and not seg.embeddings.requires_grad
    assert D.mean_over_ranks(torch.tensor(2.0)) == 2.0


def test_single_process_reduces_to_from_views() -> None:
    z1, z2 = _views()
    keys = {"instance": torch.tensor([4, 0, 9, 2, 7]), "label": torch.tensor([0, 1, 0, -1, 1])}
    q_keys = {"instance": torch.arange(5) + 100, "label": torch.tensor([0, 1, 1, 0, -1])}
    queue = Segment("queue", _views(seed=3)[0], q_keys)
    got = D.distributed_pairs([z1, z2], keys, SameKey("label"), extra=(queue,))
    ref = Pairs.from_views([z1, z2], keys, SameKey("label"), extra=(queue,))
    assert torch.equal(got.anchors, ref.anchors)
    assert torch.equal(got.candidates, ref.candidates)
    assert torch.equal(got.self_index, ref.self_index)  # type: ignore[arg-type]
    assert [s.name for s in got.segments] == ["batch", "queue"]
    for k in keys:
        assert torch.equal(got.candidate_keys[k], ref.candidate_keys[k])
    a, b = info_nce(got, TAU), info_nce(ref, TAU)
    assert torch.equal(a.losses, b.losses)
    assert torch.equal(D.global_mean(a.losses, a.valid), b.loss)
    assert torch.equal(D.scale_loss_for_ddp(a), b.loss)


def test_single_process_no_grad_candidates() -> None:
    z1, z2 = (v.requires_grad_() for v in _views())
    pairs = D.distributed_pairs([z1, z2], {"instance": torch.arange(5)}, grad=False)
    assert pairs.anchors.requires_grad and not pairs.candidates.requires_grad
    info_nce(pairs, TAU).loss.backward()
    assert z1.grad is not None


def test_match_self_index_by_ids_not_positions() -> None:
    gathered = torch.tensor([31, 5, 900, 12, 77, 40])  # two ranks' ids, non-contiguous
    local = torch.tensor([77, 12, 40])  # a rank's ids, in its own (permuted) order
    idx = D.match_self_index(local, gathered, num_views=2)
    assert idx.tolist() == [4, 3, 5, 10, 9, 11]
    assert torch.equal(gathered.repeat(2)[idx], local.repeat(2))


@pytest.mark.parametrize(
    ("local", "gathered", "message"),
    [
        ([1], [1, 1, 2], "unique over the global batch"),
        ([1], [1, -1, 2], "known"),
        ([3], [1, 2], "missing"),
        ([3], [], "missing"),
    ],
)
def test_match_self_index_errors(local: list[int], gathered: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        D.match_self_index(torch.tensor(local), torch.tensor(gathered, dtype=torch.long))


def test_global_mean_single_process() -> None:
    losses = torch.tensor([1.0, 0.0, 5.0], requires_grad=True)
    assert D.global_mean(losses, torch.tensor([True, False, True])).item() == 3.0
    zero = D.global_mean(losses, torch.zeros(3, dtype=torch.bool))
    zero.backward()
    assert zero.item() == 0.0 and losses.grad is not None
    with pytest.raises(ValueError, match="one shape"):
        D.global_mean(losses, torch.ones(2, dtype=torch.bool))


def test_validation_errors() -> None:
    z1, z2 = _views()
    with pytest.raises(ValueError, match="at least one"):
        D.distributed_pairs([], {"instance": torch.arange(5)})
    with pytest.raises(ValueError, match=r"views\[1\]"):
        D.distributed_pairs([z1, z2[:3]], {"instance": torch.arange(5)})
    with pytest.raises(ValueError, match="1-D integer"):
        D.gather_keys({"instance": torch.zeros(5)})
    with pytest.raises(ValueError, match="one length"):
        D.gather_keys({"a": torch.arange(5), "b": torch.arange(4)})
    with pytest.raises(ValueError, match=r"\[n, D\]"):
        D.gather_segment("queue", torch.zeros(5), {})
    with pytest.raises(ValueError, match="length"):
        D.gather_segment("queue", z1, {"instance": torch.arange(4)})
