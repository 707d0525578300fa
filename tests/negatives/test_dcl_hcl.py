"""DCL (survey 4.2) and HCL (survey 4.1): estimator maths, curators, defining properties."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from pairsmith.core.pairs import Pairs, Segment
from pairsmith.core.registry import create_curator, list_entries
from pairsmith.core.weights import SameKey
from pairsmith.functional.estimators import DebiasedEstimator, debiased_log_negative_mass
from pairsmith.functional.infonce import info_nce, nt_xent
from pairsmith.negatives.false_negative_removal.dcl import DebiasedNegatives
from pairsmith.negatives.hard_negative_selection.hcl import HardNegatives, annealed_beta

DTYPES = [torch.float32, torch.float64]
TOL: dict[torch.dtype, dict[str, Any]] = {
    torch.float32: {"rtol": 2e-5, "atol": 2e-6},
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
}
T = 0.5  # the papers' loss temperature


# ----------------------------------------------------------------------------- helpers
def reference_criterion(
    out_1: Tensor,
    out_2: Tensor,
    temperature: float,
    tau_plus: float,
    beta: float,
    queue: Tensor | None = None,
    estimator: str = "hard",
) -> Tensor:
    """joshr17/HCL image/main.py `criterion`, literally, one anchor at a time.

    DCL (chingyaoc/DCL main.py, commit c2a3b96) is the same code with beta = 0. With a
    queue, its rows are appended to each anchor's negatives.
    """
    batch_size = out_1.shape[0]
    out = torch.cat([out_1, out_2], dim=0)
    losses = []
    for i in range(2 * batch_size):
        p = (i + batch_size) % (2 * batch_size)
        neg_all = torch.exp(torch.mv(out, out[i]) / temperature)
        mask = torch.ones(2 * batch_size, dtype=torch.bool)
        mask[i] = False
        mask[p] = False
        neg = neg_all.masked_select(mask)
        if queue is not None:
            neg = torch.cat([neg, torch.exp(torch.mv(queue, out[i]) / temperature)])
        pos = torch.exp(torch.sum(out[i] * out[p]) / temperature)
        if estimator == "hard":
            N = neg.numel()
            imp = (beta * neg.log()).exp()
            reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
            Ng = (-tau_plus * N * pos + reweight_neg) / (1 - tau_plus)
            Ng = torch.clamp(Ng, min=N * np.e ** (-1 / temperature))
        else:  # "easy": the biased (standard) estimator
            Ng = neg.sum(dim=-1)
        losses.append(-torch.log(pos / (pos + Ng)))
    return torch.stack(losses).mean()


def views(n: int, d: int, dtype: torch.dtype, noise: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, d, generator=g, dtype=dtype)
    x2 = x1 + noise * torch.randn(n, d, generator=g, dtype=dtype)
    return x1.requires_grad_(), x2.requires_grad_()


def ours(
    x1: Tensor,
    x2: Tensor,
    curator,
    temperature: float = T,
    queue: Tensor | None = None,
    mode: str = "self",
    chunk_size=None,
) -> Tensor:
    z1, z2 = F.normalize(x1, dim=1), F.normalize(x2, dim=1)
    n = z1.shape[0]
    keys = {"instance": torch.arange(n)}
    extra: tuple[Segment, ...] = ()
    if queue is not None:
        extra = (Segment("queue", queue, {"instance": torch.full((len(queue),), -1)}),)
    pairs = Pairs.from_views([z1, z2], keys, extra=extra)
    if curator is not None:
        pairs = curator(pairs)
    return info_nce(pairs, temperature, mode, chunk_size=chunk_size).loss  # type: ignore[arg-type]


def reference(x1, x2, tau_plus, beta, temperature=T, queue=None, estimator="hard"):
    z1, z2 = F.normalize(x1, dim=1), F.normalize(x2, dim=1)
    return reference_criterion(z1, z2, temperature, tau_plus, beta, queue, estimator)


def value_and_grads(fn, x1, x2):
    loss = fn(x1, x2)
    g1, g2 = torch.autograd.grad(loss, (x1, x2))
    return loss.detach(), g1, g2


def assert_matches(a, b, dtype):
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, **TOL[dtype])


def log_ng_and_floor(x1, x2, tau_plus, beta, temperature=T):
    """Our estimator at each anchor's positive column, and the clamp bound."""
    z1, z2 = F.normalize(x1.detach(), dim=1), F.normalize(x2.detach(), dim=1)
    pairs = Pairs.from_views([z1, z2], {"instance": torch.arange(z1.shape[0])})
    logits = pairs.anchors @ pairs.candidates.T / temperature
    neg = pairs.dense_negatives().masked_fill(pairs.dense_positives() > 0, 0.0)
    log_ng = debiased_log_negative_mass(logits, neg, temperature, tau_plus, beta)
    b = z1.shape[0]
    pos_col = (torch.arange(2 * b) + b) % (2 * b)
    n = neg.gt(0).sum(1).to(logits.dtype)
    # The unclamped estimate, in linear space (reference formula).
    e = logits.exp()
    imp = (beta * logits).exp() * (neg > 0)
    reweight = (imp * e).sum(1) / (imp.sum(1) / n)
    raw = (-tau_plus * n * e[torch.arange(2 * b), pos_col] + reweight) / (1 - tau_plus)
    return log_ng[torch.arange(2 * b), pos_col], raw, n * math.exp(-1 / temperature)


# ------------------------------------------------------------------ reference agreement
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("tau_plus", "beta"), [(0.1, 0.0), (0.05, 0.0), (0.1, 1.0), (0.1, 0.5), (0.2, 2.0)]
)
def test_matches_reference_criterion(dtype, tau_plus, beta):
    x1, x2 = views(6, 8, dtype)
    curator = DebiasedNegatives(tau_plus) if beta == 0 else HardNegatives(beta, tau_plus)
    got = value_and_grads(lambda a, b: ours(a, b, curator), x1, x2)
    want = value_and_grads(lambda a, b: reference(a, b, tau_plus, beta), x1, x2)
    assert_matches(got, want, dtype)
    # With one positive per anchor "self" and "all" are the same loss.
    got_all = value_and_grads(lambda a, b: ours(a, b, curator, mode="all"), x1, x2)
    assert_matches(got_all, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_rows_match_one_block(dtype):
    x1, x2 = views(7, 8, dtype, seed=3)
    curator = HardNegatives(1.0, 0.1)
    whole = value_and_grads(lambda a, b: ours(a, b, curator), x1, x2)
    chunked = value_and_grads(lambda a, b: ours(a, b, curator, chunk_size=3), x1, x2)
    assert_matches(chunked, whole, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tau_plus", "beta"), [(0.1, 0.0), (0.1, 1.0)])
def test_queue_segment_matches_reference(dtype, tau_plus, beta):
    x1, x2 = views(5, 8, dtype, seed=1)
    g = torch.Generator().manual_seed(11)
    queue = F.normalize(torch.randn(13, 8, generator=g, dtype=dtype), dim=1)
    curator = HardNegatives(beta, tau_plus)
    got = value_and_grads(lambda a, b: ours(a, b, curator, queue=queue), x1, x2)
    want = value_and_grads(lambda a, b: reference(a, b, tau_plus, beta, queue=queue), x1, x2)
    assert_matches(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_clamp_active_matches_reference(dtype, beta):
    # Half of the instances have identical views (pos = e^{1/tau}); with a large tau+,
    # the debiased mass of those anchors is negative and the clamp sets N e^{-1/tau}.
    tau_plus = 0.6
    g = torch.Generator().manual_seed(5)
    base = torch.randn(8, 16, generator=g, dtype=dtype)
    noisy = base + 3.0 * torch.randn(8, 16, generator=g, dtype=dtype)
    x1 = base.clone().requires_grad_()
    x2 = torch.cat([base[:4], noisy[4:]]).requires_grad_()
    log_ng, raw, floor = log_ng_and_floor(x1, x2, tau_plus, beta)
    clamped = raw < floor
    assert clamped.any() and (~clamped).any()
    torch.testing.assert_close(log_ng[clamped], floor[clamped].log(), **TOL[dtype])
    torch.testing.assert_close(log_ng[~clamped], raw[~clamped].log(), **TOL[dtype])
    curator = HardNegatives(beta, tau_plus)
    got = value_and_grads(lambda a, b: ours(a, b, curator), x1, x2)
    want = value_and_grads(lambda a, b: reference(a, b, tau_plus, beta), x1, x2)
    assert_matches(got, want, dtype)
    assert all(torch.isfinite(t).all() for t in got)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clamp_passes_no_gradient(dtype):
    logits = torch.tensor([[2.0, 0.1, -0.3, 0.2]], dtype=dtype, requires_grad=True)
    w = torch.tensor([[0.0, 1.0, 1.0, 1.0]], dtype=dtype)
    # Column 0 as the positive: tau+ N e^2 >> sum of negatives -> Ng < 0 -> clamped.
    out = debiased_log_negative_mass(logits, w, T, tau_plus=0.5, beta=1.0)
    torch.testing.assert_close(out[0, 0], torch.tensor(math.log(3) - 1 / T, dtype=dtype))
    (grad,) = torch.autograd.grad(out[0, 0], logits, retain_graph=True)
    assert torch.equal(grad, torch.zeros_like(grad))
    # An unclamped column has a gradient, through the importance weights as well.
    (grad,) = torch.autograd.grad(out[0, 1], logits)
    assert (grad[0, 1:] != 0).all() and grad[0, 0] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_inverse_temperature_is_stable(dtype):
    # 1/tau = 200: exp() of the logits overflows float32; the log-space estimator does not.
    x1, x2 = views(6, 8, dtype, noise=0.2, seed=4)
    for curator in (DebiasedNegatives(0.1), HardNegatives(2.0, 0.1)):
        loss, g1, g2 = value_and_grads(lambda a, b, c=curator: ours(a, b, c, 0.005), x1, x2)
        assert torch.isfinite(loss) and torch.isfinite(g1).all() and torch.isfinite(g2).all()


# --------------------------------------------------------------- defining properties
@pytest.mark.parametrize("dtype", DTYPES)
def test_hcl_beta0_tau0_is_nt_xent_exactly(dtype):
    x1, x2 = views(6, 8, dtype, seed=2)
    plain = value_and_grads(lambda a, b: ours(a, b, None), x1, x2)
    hcl = value_and_grads(lambda a, b: ours(a, b, HardNegatives(beta=0.0, tau_plus=0.0)), x1, x2)
    for u, v in zip(hcl, plain, strict=True):
        # equal up to rounding: plain NT-Xent takes the cross-entropy fast path
        assert_matches((u,), (v,), dtype)
    # ... and the reference's biased estimator ("easy").
    easy = value_and_grads(lambda a, b: reference(a, b, 0, 0, estimator="easy"), x1, x2)
    assert_matches(hcl, easy, dtype)
    torch.testing.assert_close(hcl[0], nt_xent(x1, x2, T).detach(), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_dcl_tau0_is_nt_xent(dtype):
    x1, x2 = views(6, 8, dtype, seed=6)
    plain = value_and_grads(lambda a, b: ours(a, b, None), x1, x2)
    dcl = value_and_grads(lambda a, b: ours(a, b, DebiasedNegatives(tau_plus=0.0)), x1, x2)
    for u, v in zip(dcl, plain, strict=True):
        # equal up to rounding: plain NT-Xent takes the cross-entropy fast path
        assert_matches((u,), (v,), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dcl_debiased_not_above_biased_when_clamp_inactive(dtype):
    # Ng_debiased <= sum(neg) iff pos >= mean(neg): positives closer than the average
    # negative (small view noise), and tau+ small enough that the clamp stays inactive.
    x1, x2 = views(8, 32, dtype, noise=0.6, seed=7)
    for tau_plus in (0.01, 0.03, 0.05):
        _, raw, floor = log_ng_and_floor(x1, x2, tau_plus, 0.0)
        assert (raw > floor).all()
        with torch.no_grad():
            biased = ours(x1, x2, None)
            debiased = ours(x1, x2, DebiasedNegatives(tau_plus))
        assert debiased <= biased
        assert debiased < biased
    # Per anchor too: the debiased mass is at most the plain one.
    log_ng, _, _ = log_ng_and_floor(x1, x2, 0.05, 0.0)
    plain, _, _ = log_ng_and_floor(x1, x2, 0.0, 0.0)
    assert (log_ng <= plain).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_hcl_loss_increases_with_beta(dtype):
    x1, x2 = views(8, 16, dtype, seed=8)
    for tau_plus in (0.0, 0.1):
        with torch.no_grad():
            losses = [ours(x1, x2, HardNegatives(b, tau_plus)) for b in (0.0, 0.5, 1.0, 2.0)]
        assert all(a < b for a, b in zip(losses, losses[1:], strict=False)), losses
    # beta = 0 is DCL.
    with torch.no_grad():
        torch.testing.assert_close(
            ours(x1, x2, HardNegatives(0.0, 0.1)), ours(x1, x2, DebiasedNegatives(0.1))
        )


# ----------------------------------------------------------------- degenerate batches
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau_plus", [0.0, 0.1, 0.6])
def test_anchors_without_positive_give_finite_loss_and_gradient(dtype, tau_plus):
    x1, x2 = views(6, 8, dtype, seed=9)
    instance = torch.tensor([0, 1, 2, -1, -1, -1])  # -1 matches nothing: no positive
    z1, z2 = F.normalize(x1, dim=1), F.normalize(x2, dim=1)
    pairs = HardNegatives(1.0, tau_plus)(Pairs.from_views([z1, z2], {"instance": instance}))
    out = info_nce(pairs, T, "self")
    assert out.valid.sum() == 6
    loss = out.loss
    g1, g2 = torch.autograd.grad(loss, (x1, x2))
    assert torch.isfinite(loss) and torch.isfinite(g1).all() and torch.isfinite(g2).all()
    assert (out.losses[~out.valid] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_rows_without_negatives_are_finite(dtype, beta):
    # Every sample has the same label: with SameKey("label") positives nothing is negative.
    x1, x2 = views(4, 8, dtype, seed=10)
    z1, z2 = F.normalize(x1, dim=1), F.normalize(x2, dim=1)
    keys = {"instance": torch.arange(4), "label": torch.zeros(4, dtype=torch.long)}
    pairs = Pairs.from_views([z1, z2], keys, positives=SameKey("label"))
    pairs = HardNegatives(beta, 0.1)(pairs)
    out = info_nce(pairs, T, "self")
    g1, g2 = torch.autograd.grad(out.loss, (x1, x2))
    assert torch.isfinite(out.losses).all()
    assert torch.isfinite(g1).all() and torch.isfinite(g2).all()
    # The estimator itself: no negatives -> Ng = 0 (a large finite negative log), no NaN.
    logits = torch.randn(3, 5, dtype=dtype, requires_grad=True)
    w = torch.zeros(3, 5, dtype=dtype)
    w[0, 2:] = 1.0
    log_ng = debiased_log_negative_mass(logits, w, T, 0.1, beta)
    assert torch.isfinite(log_ng).all() and (log_ng[1:] < -1e30).all()
    (grad,) = torch.autograd.grad(log_ng[0].sum() + log_ng[1:].sum() * 0, logits)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_negatives_reduce_to_default_at_beta0_tau0(dtype):
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(4, 6, generator=g, dtype=dtype)
    w = torch.rand(4, 6, generator=g, dtype=dtype) * (torch.rand(4, 6, generator=g) > 0.3)
    log_ng = debiased_log_negative_mass(logits, w, 0.1, tau_plus=0.0, beta=0.0)
    want = torch.logsumexp(logits + w.log(), dim=1, keepdim=True).expand_as(logits)
    torch.testing.assert_close(log_ng, want)
    # beta > 0 with uniform weights c: the weight cancels in the importance mean.
    ones = (w > 0).to(dtype)
    a = debiased_log_negative_mass(logits, ones, 0.1, 0.1, 1.5)
    b = debiased_log_negative_mass(logits, 1.0 * ones, 0.1, 0.1, 1.5)
    torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------- curators
def test_curators_leave_input_untouched():
    x1, x2 = views(4, 8, torch.float32)
    pairs = Pairs.from_views([x1, x2], {"instance": torch.arange(4)})
    fields = ("anchors", "positives", "negatives", "self_index", "info")
    before = {f: getattr(pairs, f) for f in fields}
    segments = pairs.segments
    for curator in (DebiasedNegatives(), HardNegatives(), HardNegatives(anneal="down")):
        out = curator(pairs)
        assert out is not pairs
        assert pairs.estimator is None
        assert out.estimator is curator.estimator
        assert pairs.segments is segments
        for f, v in before.items():
            assert getattr(pairs, f) is v
            assert getattr(out, f) is v
        assert out.segments[0].embeddings is segments[0].embeddings


def test_defaults_and_registry():
    dcl = DebiasedNegatives()
    hcl = HardNegatives()
    assert (dcl.tau_plus, hcl.tau_plus, hcl.beta) == (0.1, 0.1, 1.0)
    assert hcl.anneal is None and hcl.for_epoch(5, 10) is hcl
    entries = {e.name: e for e in list_entries("curator")}
    e = entries["negatives.false_negative_removal.dcl"]
    assert e.obj is DebiasedNegatives
    assert e.taxonomy == ("negatives", "false_negative_removal") and e.section == "4.2"
    e = entries["negatives.hard_negative_selection.hcl"]
    assert e.obj is HardNegatives
    assert e.taxonomy == ("negatives", "hard_negative_selection") and e.section == "4.1"
    made = create_curator("negatives.hard_negative_selection.hcl", beta=0.5, tau_plus=None)
    assert isinstance(made, HardNegatives) and (made.beta, made.tau_plus) == (0.5, 0.1)
    made = create_curator("negatives.false_negative_removal.dcl", tau_plus=0.05)
    assert isinstance(made, DebiasedNegatives) and made.tau_plus == 0.05
    assert "tau_plus=0.1" in repr(dcl) and "beta=1.0" in repr(hcl)


def reference_anneal(beta: float, epochs: int, n_steps: int = 9) -> list[float]:
    """The beta used in each epoch by joshr17/HCL image/main.py with --anneal down."""
    used = []
    betas = iter(np.linspace(beta, 0, n_steps))
    for epoch in range(1, epochs + 1):
        used.append(beta)  # train(...) with the current beta
        if epoch % (int(epochs / n_steps)) == 0:
            beta = next(betas)
    return used


@pytest.mark.parametrize("epochs", [9, 18, 27, 100, 400])
def test_anneal_down_matches_reference_schedule(epochs):
    want = reference_anneal(1.0, epochs)
    got = [annealed_beta(1.0, e, epochs) for e in range(epochs)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert got[0] == 1.0
    if epochs == 400:
        assert got[-1] == 0.0


def test_anneal_down_curator_and_edge_cases():
    hcl = HardNegatives(beta=2.0, tau_plus=0.1, anneal="down")
    late = hcl.for_epoch(399, 400)
    assert late is not hcl and late.current_beta == 0.0 and late.beta == 2.0
    assert hcl.current_beta == 2.0  # the original is unchanged
    assert late.estimator.tau_plus == 0.1
    mid = hcl.for_epoch(44 * 4, 400)  # four draws: linspace(2, 0, 9)[3]
    assert mid.current_beta == pytest.approx(2.0 * 5 / 8)
    # Where the reference fails (epochs < 9, or more than 9 multiples), beta stays >= 0.
    assert [annealed_beta(1.0, e, 3) for e in range(3)] == [1.0, 1.0, 0.875]
    assert annealed_beta(1.0, 16, 17) == 0.0


# ----------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), True, "0.1", None])
def test_bad_tau_plus_raises(bad):
    for make in (
        lambda: DebiasedNegatives(tau_plus=bad),
        lambda: HardNegatives(tau_plus=bad),
        lambda: DebiasedEstimator(tau_plus=bad),
        lambda: debiased_log_negative_mass(torch.zeros(2, 3), torch.ones(2, 3), 0.5, bad),
    ):
        with pytest.raises(ValueError, match="tau_plus"):
            make()


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan"), False, "1", None])
def test_bad_beta_raises(bad):
    for make in (
        lambda: HardNegatives(beta=bad),
        lambda: DebiasedEstimator(0.1, beta=bad),
        lambda: debiased_log_negative_mass(torch.zeros(2, 3), torch.ones(2, 3), 0.5, 0.1, bad),
        lambda: annealed_beta(bad, 0, 10),
    ):
        with pytest.raises(ValueError, match="beta"):
            make()


def test_other_bad_arguments_raise():
    z, w = torch.zeros(2, 3), torch.ones(2, 3)
    for bad in (0.0, -0.5, float("inf"), True):
        with pytest.raises(ValueError, match="temperature"):
            debiased_log_negative_mass(z, w, bad, 0.1)
    with pytest.raises(ValueError, match="neg_weight"):
        debiased_log_negative_mass(z, torch.ones(2, 4), 0.5, 0.1)
    with pytest.raises(ValueError, match="logits"):
        debiased_log_negative_mass(torch.zeros(3), torch.ones(3), 0.5, 0.1)
    with pytest.raises(ValueError, match="logits"):
        debiased_log_negative_mass(z.long(), w, 0.5, 0.1)
    with pytest.raises(ValueError, match="anneal"):
        HardNegatives(anneal="up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epochs"):
        annealed_beta(1.0, 0, 0)
    with pytest.raises(ValueError, match="epoch"):
        annealed_beta(1.0, -1, 10)
    with pytest.raises(ValueError, match="n_steps"):
        annealed_beta(1.0, 0, 10, n_steps=1)
    with pytest.raises(ValueError, match="epochs"):
        HardNegatives(anneal="down").for_epoch(0, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_debiasing_lowers_the_mass_iff_positive_beats_mean_negative(dtype):
    # Ng_debiased - sum(neg) = tau+ (sum(neg) - N pos) / (1 - tau+): the sign follows
    # pos vs mean(neg), so L_debiased <= L_biased needs positives closer than the mean.
    logits = torch.tensor([[1.5, 0.2, -0.4, 0.9, 0.1]], dtype=dtype)
    w = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]], dtype=dtype)
    debiased = debiased_log_negative_mass(logits, w, T, 0.1)
    plain = debiased_log_negative_mass(logits, w, T, 0.0)
    assert debiased[0, 0] < plain[0, 0]  # e^{1.5} > mean of e^{0.2, -0.4, 0.9}
    assert debiased[0, 4] > plain[0, 4]  # e^{0.1} < that mean
