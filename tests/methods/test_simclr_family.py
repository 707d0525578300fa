"""SimCLR and its curated variants (SupCon, FNC, DCL, HCL): defining properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pairsmith.functional.infonce import nt_xent
from pairsmith.methods import SimCLR

from .conftest import make_batch, make_method


def _step(name: str, views_n: int = 2, seed: int = 0, **kw: object):  # type: ignore[no-untyped-def]
    method = make_method(name, seed=seed, **kw)
    views, keys = make_batch(views=views_n)
    return method, method.training_step(views, keys, step=0, epoch=0), keys


def ntxent_loop(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """The 2N-anchor mean NT-Xent, one anchor at a time."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i)
        total += -(float(z[i] @ z[p]) / tau - math.log(den))
    return total / (2 * n)


def test_simclr_loss_is_nt_xent_of_its_embeddings() -> None:
    method, out, _ = _step("methods.simclr")
    z1, z2 = out.embeddings
    assert isinstance(method, SimCLR)
    assert out.loss.item() == pytest.approx(ntxent_loop(z1, z2, method.temperature), rel=1e-4)
    torch.testing.assert_close(out.loss.detach(), nt_xent(z1, z2, method.temperature))


def test_simclr_identical_embeddings_give_log_2n_minus_1() -> None:
    z = F.normalize(torch.ones(4, 8), dim=1)
    assert nt_xent(z, z, 0.1).item() == pytest.approx(math.log(7), rel=1e-5)


def test_simclr_multi_view_pairs() -> None:
    _, out, _ = _step("methods.simclr", views_n=3, num_views=3)
    assert out.pairs is not None
    assert out.pairs.num_anchors == 24 and out.pairs.num_candidates == 24
    assert out.pairs.dense_positives().sum(1).eq(2).all()  # the two other views


def test_supcon_matches_a_reference_loop_with_unlabeled_fallback() -> None:
    method = make_method("methods.supcon")
    views, keys = make_batch()
    keys["label"][0] = -1  # unlabeled: only its own other view is a positive
    out = method.training_step(views, keys, step=0, epoch=0)
    z = F.normalize(torch.cat(out.embeddings).double(), dim=1)
    n = views[0].shape[0]
    lab, inst = keys["label"].repeat(2), keys["instance"].repeat(2)
    tau = method.temperature
    total = 0.0
    for i in range(2 * n):
        pos = [
            j
            for j in range(2 * n)
            if j != i and (inst[j] == inst[i] or (lab[i] >= 0 and lab[j] == lab[i]))
        ]
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i)
        total += -sum(float(z[i] @ z[p]) / tau - math.log(den) for p in pos) / len(pos)
    assert out.loss.item() == pytest.approx(total / (2 * n), rel=1e-4)
    assert out.pairs is not None
    assert out.pairs.dense_positives()[0].sum() == 1


def test_supcon_l_in_differs_from_l_out() -> None:
    _, a, _ = _step("methods.supcon", variant="out")
    _, b, _ = _step("methods.supcon", variant="in")
    assert a.loss.item() >= b.loss.item() - 1e-6  # Jensen: L_out >= L_in


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("methods.simclr_dcl", {"tau_plus": 0.0}),
        ("methods.simclr_hcl", {"beta": 0.0, "tau_plus": 0.0}),
        ("methods.simclr_fnc", {"threshold": 2.0}),
        ("methods.simclr_fnc", {"threshold": 2.0, "mode": "attraction"}),
        ("methods.simclr_fnc", {"top_k": 0}),
    ],
)
def test_curated_variant_reduces_to_simclr(name: str, kw: dict[str, object]) -> None:
    temperature = 0.5 if "dcl" in name or "hcl" in name else 0.1
    _, ref, _ = _step("methods.simclr", temperature=temperature)
    _, out, _ = _step(name, **kw)
    torch.testing.assert_close(out.loss, ref.loss)


def test_hcl_weighting_raises_the_dcl_loss() -> None:
    # sum(imp * neg) / mean(imp) >= sum(neg) when imp grows with neg (Chebyshev).
    _, dcl, _ = _step("methods.simclr_dcl", tau_plus=0.1)
    _, hcl, _ = _step("methods.simclr_hcl", beta=1.0, tau_plus=0.1)
    assert hcl.loss.item() >= dcl.loss.item()


def test_hcl_anneal_reaches_zero_beta() -> None:
    method = make_method("methods.simclr_hcl", anneal="down", epochs=9)
    betas = [method.curators_for(0, e)[0].current_beta for e in range(9)]
    assert betas[0] == 1.0 and betas[-1] < 0.2
    assert all(a >= b for a, b in zip(betas, betas[1:], strict=False))


def test_fnc_elimination_removes_detected_negatives() -> None:
    _, out, _ = _step("methods.simclr_fnc", threshold=-1.0, top_k=3)
    assert out.pairs is not None
    det = out.pairs.info["false_negatives"]
    assert det.shape == (16, 3) and bool((det >= 0).all())
    # 16 columns: self and the instance positive excluded, 3 detections eliminated.
    assert out.pairs.dense_negatives().sum(1).eq(16 - 2 - 3).all()
    assert out.pairs.dense_positives().sum(1).eq(1).all()


def test_fnc_attraction_adds_positives() -> None:
    _, out, _ = _step("methods.simclr_fnc", threshold=-1.0, top_k=3, mode="attraction")
    assert out.pairs is not None
    assert out.pairs.dense_positives().sum(1).eq(4).all()


@pytest.mark.parametrize(("support_in_loss", "anchors"), [(True, 32), (False, 16)])
def test_fnc_support_views(support_in_loss: bool, anchors: int) -> None:
    method, out, _ = _step(
        "methods.simclr_fnc", views_n=4, num_views=4, support_in_loss=support_in_loss
    )
    assert method.num_views == 4
    assert out.pairs is not None and out.pairs.num_anchors == anchors
