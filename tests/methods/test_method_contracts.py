"""Contract tests over every recipe: a short real run, state dict, options, registry."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pairsmith.core.registry import create_method, list_entries, list_methods
from pairsmith.methods import Method, StepOutput

from .conftest import TAXONOMY, TINY, make_batch, make_method, tiny_backbone

NAMES = sorted(TINY)


def _queues(method: nn.Module) -> list[nn.Module]:
    return [m for m in method.modules() if m.__class__.__name__ == "Queue"]


def test_every_recipe_is_registered_with_its_taxonomy() -> None:
    entries = {e.name: e for e in list_entries("method")}
    assert set(NAMES) <= set(list_methods())
    for name, leaf in TAXONOMY.items():
        assert entries[name].taxonomy == leaf
        assert entries[name].summary  # a docstring's first line for the feature table


@pytest.mark.parametrize("name", NAMES)
def test_create_method_contract(name: str) -> None:
    # Defaults only; None options are dropped so the recipe's own defaults apply.
    m = create_method(name, backbone=tiny_backbone(), temperature=None)
    assert isinstance(m, Method)
    assert m.encoder() is m.backbone
    assert m.num_views >= 2
    assert m.__doc__ and "defaults" in m.__doc__.lower()  # scaled defaults documented


@pytest.mark.parametrize("name", NAMES)
def test_short_run_loss_finite_and_decreasing(name: str) -> None:
    method = make_method(name)
    views, keys = make_batch(views=method.num_views)
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    # Queues are held fixed: on one repeated batch, a growing queue would fill with copies
    # of the positives and make the loss rise whatever the encoder does.
    frozen = [copy.deepcopy(q.state_dict()) for q in _queues(method)]
    losses = []
    for step in range(6):
        torch.manual_seed(step)
        out = method.training_step(views, keys, step=step, epoch=0)
        assert isinstance(out, StepOutput)
        assert out.loss.dim() == 0 and out.loss.requires_grad
        assert math.isfinite(out.loss.item())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.after_optimizer_step(step=step, total_steps=6)
        for q, st in zip(_queues(method), frozen, strict=True):
            q.load_state_dict(st)
        losses.append(out.loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_step_output_is_detached_and_shaped(name: str) -> None:
    method = make_method(name)
    views, keys = make_batch(views=method.num_views)
    out = method.training_step(views, keys, step=0, epoch=0)
    assert out.pairs is not None
    assert not out.pairs.anchors.requires_grad
    assert all(not s.embeddings.requires_grad for s in out.pairs.segments)
    assert len(out.embeddings) == 2
    for z in out.embeddings:
        assert z.shape[0] == views[0].shape[0] and not z.requires_grad
    assert all(isinstance(v, float) for v in out.logs.values())
    assert "loss" in out.logs


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    a = make_method(name)
    views, keys = make_batch(views=a.num_views)
    opt = torch.optim.SGD(a.parameters(), lr=0.05)
    for step in range(2):
        out = a.training_step(views, keys, step=step, epoch=1)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    state = a.state_dict()
    b = make_method(name, seed=123)
    b.load_state_dict(state)
    for k, v in b.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, state[k]), k
    for qa, qb in zip(_queues(a), _queues(b), strict=True):
        assert int(qa.ptr) == int(qb.ptr) and len(qa) == len(qb)
    torch.manual_seed(7)
    la = a.training_step(views, keys, step=2, epoch=1).loss
    torch.manual_seed(7)
    lb = b.training_step(views, keys, step=2, epoch=1).loss
    torch.testing.assert_close(la, lb)


def test_state_dict_holds_momentum_encoder_and_queue() -> None:
    keys = make_method("methods.mocov2").state_dict().keys()
    assert any(k.startswith("momentum_backbone.") for k in keys)
    assert any(k.startswith("momentum_projector.") for k in keys)
    assert {"queue.embeddings", "queue.key_instance", "queue.key_label", "queue.ptr"} <= set(keys)
    assert "queue.embeddings" in make_method("methods.nnclr").state_dict()


COMMON_BAD = [("temperature", 0.0), ("temperature", -1.0), ("proj_dim", 0), ("chunk_size", 0)]
BAD = {
    "methods.simclr": [("num_views", 1), ("proj_hidden_dim", 0), ("proj_layers", 0)],
    "methods.supcon": [("variant", "both"), ("label_key", "")],
    "methods.simclr_fnc": [
        ("mode", "cancel"),
        ("top_k", -1),
        ("threshold", float("nan")),
        ("aggregation", "min"),
        ("support_in_loss", 1),
    ],
    "methods.simclr_dcl": [("tau_plus", 1.0), ("tau_plus", -0.1)],
    "methods.simclr_hcl": [("beta", -1.0), ("tau_plus", 1.5), ("anneal", "up")],
    "methods.mocov2": [
        ("momentum", 1.5),
        ("queue_size", 0),
        ("bn_splits", 0),
        ("symmetric", "yes"),
        ("queue_keys", ("label",)),
    ],
    "methods.mocov2_mochi": [
        ("num_hard", 0),
        ("num_mix", -1),
        ("num_query_mix", -1),
        ("query_beta_max", 0.7),
        ("warmup_epochs", -1),
    ],
    "methods.nnclr": [("queue_size", 0), ("pred_hidden_dim", 0), ("queue_keys", ())],
}


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [(n, o, v) for n in NAMES for o, v in COMMON_BAD + BAD[n]],
)
def test_bad_option_raises_value_error_naming_it(name: str, option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        make_method(name, **{option: value})


@pytest.mark.parametrize("name", NAMES)
def test_backbone_without_out_dim_is_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="out_dim"):
        create_method(name, backbone=nn.Flatten(), **TINY[name])


def test_hcl_anneal_needs_epochs() -> None:
    with pytest.raises(ValueError, match="epochs"):
        make_method("methods.simclr_hcl", anneal="down")


@pytest.mark.parametrize("name", NAMES)
def test_too_few_views_raise(name: str) -> None:
    method = make_method(name)
    views, keys = make_batch(views=1)
    with pytest.raises(ValueError, match="views"):
        method.training_step(views, keys, step=0, epoch=0)


def test_supcon_without_labels_names_the_key() -> None:
    method = make_method("methods.supcon")
    views, keys = make_batch()
    del keys["label"]
    with pytest.raises(ValueError, match="label"):
        method.training_step(views, keys, step=0, epoch=0)


@pytest.mark.parametrize("name", NAMES)
def test_keys_must_be_integer_batch_vectors(name: str) -> None:
    method = make_method(name)
    views, keys = make_batch(views=method.num_views)
    keys["label"] = keys["label"][:3]
    with pytest.raises(ValueError, match="label"):
        method.training_step(views, keys, step=0, epoch=0)
