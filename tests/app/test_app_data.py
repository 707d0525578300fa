"""Sampler order, sharding and resume; loading errors; LR schedule; step seeds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pairsmith.app.config import ConfigError, load_config
from pairsmith.app.datamodule import (
    ImageSet,
    InMemoryKeyed,
    ShardedBatchSampler,
    channel_stats,
    load_splits,
)
from pairsmith.app.module import lr_factor, step_seed


def _epoch(s: ShardedBatchSampler, epoch: int) -> list[list[int]]:
    s.set_epoch(epoch)
    return list(s)


def test_order_is_a_function_of_seed_and_epoch() -> None:
    a, b = ShardedBatchSampler(50, 8, seed=3), ShardedBatchSampler(50, 8, seed=3)
    assert _epoch(a, 2) == _epoch(b, 2)
    assert _epoch(a, 1) != _epoch(a, 2)
    assert _epoch(ShardedBatchSampler(50, 8, seed=4), 2) != _epoch(a, 2)
    assert len(a) == 6 and all(len(x) == 8 for x in _epoch(a, 0))
    assert len(ShardedBatchSampler(50, 8, drop_last=False)) == 7


def test_shards_partition_the_single_process_batches() -> None:
    single = _epoch(ShardedBatchSampler(40, 8, seed=1), 5)
    shards = [_epoch(ShardedBatchSampler(40, 8, 1, rank=r, world_size=2), 5) for r in range(2)]
    for i, batch in enumerate(single):
        assert shards[0][i] + shards[1][i] == batch


def test_sampler_resumes_mid_epoch() -> None:
    s = ShardedBatchSampler(40, 8, seed=0)
    s.set_epoch(1)
    full = list(s)
    it = iter(s)
    next(it), next(it)
    state = s.state_dict()
    assert state == {"epoch": 1, "consumed": 2}
    fresh = ShardedBatchSampler(40, 8, seed=0)
    fresh.load_state_dict(state)
    assert list(fresh) == full[2:]
    assert list(fresh) == full  # only the first iteration after loading skips
    assert fresh.sampler is fresh  # where Lightning looks for set_epoch


def test_sampler_validates() -> None:
    with pytest.raises(ValueError, match="multiple of world_size"):
        ShardedBatchSampler(10, 3, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        ShardedBatchSampler(10, 4, rank=2, world_size=2)


def test_in_memory_batches() -> None:
    ds = InMemoryKeyed(torch.arange(10).view(10, 1, 1, 1), {"instance": torch.arange(10)})
    images, keys = ds.__getitems__([3, 1])
    assert images.flatten().tolist() == [3, 1] and keys["instance"].tolist() == [3, 1]
    assert len(ds) == 10 and ds[4][1]["instance"] == 4


def test_load_fake_fashion_mnist_with_subsets(fmnist_root: Path) -> None:
    cfg = load_config(None, [f"data.root={fmnist_root}", "data.subset=20", "data.test_subset=10"])
    train, test = load_splits(cfg.data)
    assert train.images.shape == (20, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [2] * 10  # class-balanced
    assert len(test) == 10


def test_missing_data_names_where_it_looked(tmp_path: Path) -> None:
    cfg = load_config(None, [f"data.root={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="--data-root"):
        load_splits(cfg.data)


def test_bad_data_options(fmnist_root: Path) -> None:
    cfg = load_config(None, [f"data.root={fmnist_root}", "data.options={crop_size: 8}"])
    with pytest.raises(ConfigError, match="unknown key.*data.options.crop_size"):
        load_splits(cfg.data)
    cfg = load_config(None, [f"data.root={fmnist_root}", "data.subset=15"])
    with pytest.raises(ConfigError, match="data.subset"):
        load_splits(cfg.data)


def test_image_set_helpers() -> None:
    s = ImageSet(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, -1, 2, 1]))
    assert s.num_classes == 3 and len(s.labelled()) == 3
    mean, std = channel_stats(torch.full((2, 3, 2, 2), 255, dtype=torch.uint8))
    assert mean == [1.0, 1.0, 1.0] and all(v > 0 for v in std)


def test_lr_schedule() -> None:
    f = [lr_factor(s, warmup=2, total=10, schedule="cosine", min_ratio=0.0) for s in range(10)]
    assert f[0] == 0.5 and f[1] == 1.0 and f[2] == 1.0
    assert all(a >= b for a, b in zip(f[1:], f[2:], strict=False))
    assert lr_factor(10, 2, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(6, 2, 10, "cosine", 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(7, 0, 10, "constant", 0.0) == 1.0


def test_step_seeds_differ_by_step_and_rank() -> None:
    seeds = {step_seed(0, s, r) for s in range(100) for r in range(4)}
    assert len(seeds) == 400 and all(0 <= x < 2**63 for x in seeds)


def test_image_folder_with_held_out_split(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(5):
            pil.new("RGB", (12 + i, 10), (40 * i, 100, 0)).save(tmp_path / c / f"{i}.png")
    cfg = load_config(
        None,
        [
            "data.name=image_folder",
            f"data.root={tmp_path}",
            "data.test_fraction=0.2",
            "data.options={size: 8}",
        ],
    )
    train, test = load_splits(cfg.data)
    assert train.images.shape == (8, 3, 8, 8) and len(test) == 2
    assert train.classes == ["a", "b"]
    cfg = load_config(None, ["data.name=image_folder", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match="data.options.size"):
        load_splits(cfg.data)  # different sizes and no resize


@pytest.mark.slow
def test_textures_config_trains_a_few_steps(tmp_path: Path) -> None:
    from pairsmith.app.train import train

    pytest.importorskip("pairsmith.data.textures")
    config = Path(__file__).resolve().parents[2] / "configs" / "simclr_textures.yaml"
    overrides = [
        "data.options.crops_per_texture=4",
        "data.batch_size=32",
        "trainer.max_steps=2",
        "trainer.progress_bar=false",
        "model.options.channels=[8, 16]",
        "eval.knn_k=5",
    ]
    try:
        cfg = load_config(config, overrides)
        res = train(cfg, tmp_path / "run")
    except FileNotFoundError as e:
        pytest.skip(f"no GIMP patterns here: {e}")
    assert res["train"]["steps"] == 2
    assert set(res["knn_top1"]) == {"trained", "random_init", "raw_pixels"}
