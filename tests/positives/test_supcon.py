"""SupCon positives (Khosla et al. 2020; survey 3.2.3) against a per-anchor reference loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pairsmith.core.pairs import Pairs, Segment
from pairsmith.core.registry import create_curator, list_entries
from pairsmith.core.weights import SameKey, Union
from pairsmith.functional.infonce import info_nce, nt_xent
from pairsmith.losses.infonce import SupConLoss
from pairsmith.positives.supervised import SupConPositives

DTYPES = [torch.float32, torch.float64]


def close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    t = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, ref, rtol=t, atol=t)


def make_features(b: int, v: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = F.normalize(torch.randn(b, v, d, generator=g, dtype=torch.float64), dim=-1)
    return f.to(dtype).requires_grad_(True)


def ref_supcon(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    queue: torch.Tensor | None = None,
    queue_labels: torch.Tensor | None = None,
    variant: str = "out",
) -> torch.Tensor:
    """Per-anchor loop of HobbitLong/SupContrast ``SupConLoss`` (contrast_mode='all').

    features ``[B, V, D]``; anchors and contrast are ``cat(unbind(features, 1))`` (view
    major). Positives: same label, self excluded; denominator: every column but self.
    base_temperature = temperature. Optional queue columns are appended to the contrast
    set (positive when their label matches). ``variant='in'`` is L_in.
    """
    b, v, _ = features.shape
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    lab = labels.repeat(v)
    if queue is not None:
        assert queue_labels is not None
        contrast = torch.cat([contrast, queue], dim=0)
        lab = torch.cat([lab, queue_labels])
    losses = []
    for i in range(b * v):
        logits = contrast @ contrast[i] / temperature
        others = [j for j in range(contrast.shape[0]) if j != i]
        log_den = torch.logsumexp(logits[others], dim=0)
        pos = [j for j in others if lab[j] == lab[i] and lab[i] >= 0]
        terms = torch.stack([logits[j] - log_den for j in pos])
        if variant == "out":
            losses.append(-terms.mean())
        else:
            losses.append(-(torch.logsumexp(terms, dim=0) - math.log(len(pos))))
    return torch.stack(losses).mean()


def ours(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    queue: torch.Tensor | None = None,
    queue_labels: torch.Tensor | None = None,
    variant: str = "out",
    keep_instance: bool = True,
) -> torch.Tensor:
    b, v, _ = features.shape
    keys = {"instance": torch.arange(b), "label": labels}
    extra: tuple[Segment, ...] = ()
    if queue is not None:
        assert queue_labels is not None
        qkeys = {"instance": torch.full((queue.shape[0],), -1), "label": queue_labels}
        extra = (Segment("queue", queue, qkeys),)
    pairs = Pairs.from_views(list(torch.unbind(features, dim=1)), keys, extra=extra)
    loss_fn = SupConLoss(
        temperature,
        variant=variant,  # type: ignore[arg-type]
        curators=[SupConPositives("label", keep_instance=keep_instance)],
    )
    return loss_fn(pairs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("views", [2, 3])
def test_matches_reference_loop_value_and_grad(dtype: torch.dtype, views: int) -> None:
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0])
    f1 = make_features(8, views, 16, dtype)
    f2 = f1.detach().clone().requires_grad_(True)
    ref = ref_supcon(f1, labels, 0.1)
    got = ours(f2, labels, 0.1)
    close(got, ref, dtype)
    ref.backward()
    got.backward()
    assert f1.grad is not None and f2.grad is not None
    close(f2.grad, f1.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_hobbitlong_vectorised_form(dtype: torch.dtype) -> None:
    # The vectorised HobbitLong formula (max-subtracted logits, masks) as a second witness.
    labels = torch.tensor([3, 1, 3, 2, 1, 0])
    feats = make_features(6, 2, 8, dtype, seed=3)
    tau = 0.07
    contrast = torch.cat(torch.unbind(feats, dim=1), dim=0)
    mask = torch.eq(labels[:, None], labels[None, :]).to(dtype).repeat(2, 2)
    adc = contrast @ contrast.T / tau
    logits = adc - adc.max(dim=1, keepdim=True).values.detach()
    logits_mask = 1 - torch.eye(12, dtype=dtype)
    mask = mask * logits_mask
    log_prob = logits - torch.log((torch.exp(logits) * logits_mask).sum(1, keepdim=True))
    ref = -((mask * log_prob).sum(1) / mask.sum(1)).mean()
    close(ours(feats, labels, tau), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_with_queue_segment(dtype: torch.dtype) -> None:
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    g = torch.Generator().manual_seed(7)
    queue = F.normalize(torch.randn(10, 16, generator=g, dtype=torch.float64), dim=1).to(dtype)
    # Queue labels include a class absent from the batch and an unknown entry.
    qlab = torch.tensor([0, 1, 2, 3, 4, 0, 1, -1, 2, 4])
    f1 = make_features(6, 2, 16, dtype, seed=1)
    f2 = f1.detach().clone().requires_grad_(True)
    ref = ref_supcon(f1, labels, 0.2, queue, qlab)
    got = ours(f2, labels, 0.2, queue, qlab)
    close(got, ref, dtype)
    ref.backward()
    got.backward()
    assert f1.grad is not None and f2.grad is not None
    close(f2.grad, f1.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_l_in_variant_matches_its_loop(dtype: torch.dtype) -> None:
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 0])
    f1 = make_features(7, 2, 12, dtype, seed=5)
    f2 = f1.detach().clone().requires_grad_(True)
    ref = ref_supcon(f1, labels, 0.1, variant="in")
    got = ours(f2, labels, 0.1, variant="in")
    close(got, ref, dtype)
    ref.backward()
    got.backward()
    assert f1.grad is not None and f2.grad is not None
    close(f2.grad, f1.grad, dtype)
    # L_in <= L_out (Jensen), strictly here since rows have several positives.
    assert float(ours(f2.detach(), labels, 0.1, variant="in")) < float(
        ours(f2.detach(), labels, 0.1, variant="out")
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("keep_instance", [True, False])
def test_distinct_labels_equal_nt_xent(dtype: torch.dtype, keep_instance: bool) -> None:
    # methods.md 5.1: SupConLoss(labels=arange(B)) == SimCLR == 2N-anchor NT-Xent.
    feats = make_features(8, 2, 16, dtype, seed=2)
    labels = torch.arange(8)
    got = ours(feats, labels, 0.5, keep_instance=keep_instance)
    z1, z2 = feats[:, 0], feats[:, 1]
    close(got, nt_xent(z1, z2, 0.5, normalize=False), dtype)


def test_unlabeled_rows_without_instance_are_invalid_not_nan() -> None:
    labels = torch.tensor([0, -1, 0, 1, -1, 1])
    feats = make_features(6, 2, 8, torch.float64, seed=4)
    keys = {"instance": torch.arange(6), "label": labels}
    pairs = Pairs.from_views(list(torch.unbind(feats, dim=1)), keys)

    out = info_nce(SupConPositives(keep_instance=False)(pairs), 0.1)
    expected_valid = (labels >= 0).repeat(2)
    assert torch.equal(out.valid, expected_valid)
    assert torch.all(out.losses[~expected_valid] == 0)
    assert torch.isfinite(out.losses).all()
    out.loss.backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
    # Loss is the mean over valid anchors only, equal to the loop over labeled rows
    # (unlabeled rows remain in every denominator).
    ref = []
    z = torch.cat(torch.unbind(feats.detach(), dim=1), dim=0)
    lab = labels.repeat(2)
    for i in range(12):
        if lab[i] < 0:
            continue
        logits = z @ z[i] / 0.1
        others = [j for j in range(12) if j != i]
        log_den = torch.logsumexp(logits[others], dim=0)
        ref.append(-torch.stack([logits[j] - log_den for j in others if lab[j] == lab[i]]).mean())
    torch.testing.assert_close(out.loss.detach(), torch.stack(ref).mean())

    # With keep_instance (default) unlabeled rows keep their augmented view as positive.
    out2 = info_nce(SupConPositives()(pairs), 0.1)
    assert bool(out2.valid.all())


def test_keep_instance_rule_and_input_untouched() -> None:
    feats = make_features(4, 2, 8, torch.float32)
    keys = {"instance": torch.arange(4), "label": torch.tensor([0, 0, -1, 1])}
    pairs = Pairs.from_views(list(torch.unbind(feats.detach(), dim=1)), keys)
    before = pairs.positives
    new = SupConPositives()(pairs)
    assert pairs.positives is before
    assert isinstance(new.positives, Union)
    assert isinstance(SupConPositives(keep_instance=False)(pairs).positives, SameKey)
    dense = new.dense_positives()
    # Row 2 (unlabeled, instance 2) -> its other view (column 6) only.
    assert dense[2].nonzero().flatten().tolist() == [6]
    # Row 0 (label 0) -> instance 1's views and its own other view.
    assert dense[0].nonzero().flatten().tolist() == [1, 4, 5]


def test_registered_with_taxonomy() -> None:
    entry = {e.name: e for e in list_entries("curator")}["positives.supervised.supcon"]
    assert entry.taxonomy == ("positives", "supervised")
    assert entry.section == "3.2.3"
    cur = create_curator("positives.supervised.supcon", key="label", keep_instance=None)
    assert isinstance(cur, SupConPositives) and cur.keep_instance is True


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="key"):
        SupConPositives("")
    with pytest.raises(ValueError, match="key"):
        SupConPositives(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep_instance"):
        SupConPositives(keep_instance="yes")  # type: ignore[arg-type]
    feats = make_features(3, 2, 4, torch.float32)
    z = list(torch.unbind(feats.detach(), dim=1))
    with pytest.raises(ValueError, match="'label'"):
        SupConPositives()(Pairs.from_views(z, {"instance": torch.arange(3)}))
    labelled_only = Pairs.from_views(z, {"label": torch.arange(3)}, positives=SameKey("label"))
    with pytest.raises(ValueError, match="'instance'"):
        SupConPositives()(labelled_only)
    # keep_instance=False needs only the label key.
    SupConPositives(keep_instance=False)(labelled_only)


def test_chunked_loss_matches_single_block() -> None:
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0])
    feats = make_features(8, 2, 16, torch.float64)
    keys = {"instance": torch.arange(8), "label": labels}
    pairs = SupConPositives()(Pairs.from_views(list(torch.unbind(feats, dim=1)), keys))
    full = info_nce(pairs, 0.1, chunk_size=None)
    chunked = info_nce(pairs, 0.1, chunk_size=3)
    torch.testing.assert_close(chunked.losses, full.losses)
    (g_full,) = torch.autograd.grad(full.loss, feats)
    (g_chunk,) = torch.autograd.grad(chunked.loss, feats)
    torch.testing.assert_close(g_chunk, g_full)
