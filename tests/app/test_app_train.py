"""Short real training runs on a tiny generated IDX data set: results, report, eval, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from ps_app_helpers import tiny_overrides

from pairsmith.app.cli import main
from pairsmith.app.config import ConfigError, load_config
from pairsmith.app.report import read_metrics
from pairsmith.app.train import train

pytest.importorskip("lightning")


@pytest.fixture(scope="module")
def run_dir(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "smoke"
    cfg = load_config(None, tiny_overrides(fmnist_root))
    train(cfg, run)
    return run


def test_training_run_logs_finite_losses(run_dir: Path) -> None:
    series, epochs = read_metrics(run_dir)
    losses = [v for _, v in series["loss"]]
    assert len(losses) == 8  # 64 images / batch 16 = 4 steps x 2 epochs, logged every step
    assert all(math.isfinite(v) for v in losses)
    assert len(series["knn_top1"]) == 2  # one online kNN per epoch
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_results_json_has_trained_random_init_and_pixels(run_dir: Path) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    knn = res["knn_top1"]
    assert set(knn) == {"trained", "random_init", "raw_pixels"}
    assert all(0.0 <= v <= 100.0 for v in knn.values())
    assert res["test_images"] == 40
    assert res["train"]["steps"] == 8


def test_resolved_config_reloads(run_dir: Path) -> None:
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.model.in_channels == 1 and cfg.views.size == 28
    assert cfg.views.mean is not None and len(cfg.views.mean) == 1


def test_report_writes_pngs(run_dir: Path, tmp_path: Path) -> None:
    assert main(["report", str(run_dir), "--out", str(tmp_path)]) == 0
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert {"loss.png", "knn_top1.png", "summary.png"} <= pngs
    assert all(p.stat().st_size > 1000 for p in tmp_path.glob("*.png"))


def test_offline_eval_matches_final_knn(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(run_dir), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    final = json.loads((run_dir / "results.json").read_text())["knn_top1"]["trained"]
    assert res["knn_top1"]["trained"] == pytest.approx(final)
    assert res["step"] == 8


def test_eval_checkpoint_file_with_linear_probe(run_dir: Path) -> None:
    from pairsmith.app.evaluate import evaluate_checkpoint

    res = evaluate_checkpoint(
        run_dir / "checkpoints" / "last.ckpt", ["eval.linear.epochs=5"], linear=True, write=False
    )
    assert 0.0 <= res["linear_top1"]["trained"] <= 100.0


def test_new_run_refuses_a_directory_with_checkpoints(run_dir: Path, fmnist_root: Path) -> None:
    with pytest.raises(FileExistsError, match="--resume"):
        train(load_config(None, tiny_overrides(fmnist_root)), run_dir)


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "r")
    # Missing data.
    assert main(["train", "--out", out, "--data-root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "--data-root" in err
    # Resume without a checkpoint.
    assert main(["train", "--out", out, "--resume"]) == 2
    assert "config.yaml not found" in capsys.readouterr().err
    # Unknown key.
    assert main(["train", "--out", out, "optim.lrr=1"]) == 2
    assert "unknown key 'optim.lrr'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.name=nosuch", "unknown method.name 'nosuch'; registered methods:"),
        ("method.options={bogus: 1}", "unknown option 'method.options.bogus'"),
        ("method.options={temperature: -1}", "temperature"),
        ("views.options={bogus: 1}", "unknown option 'views.options.bogus'"),
        ("model.backbone=nosuch", "unknown model.backbone 'nosuch'"),
        ("model.options={bogus: 1}", "unknown option 'model.options.bogus'"),
        ("data.batch_size=1000", "exceeds the 64 training images"),
    ],
)
def test_bad_input_gives_clear_error(
    fmnist_root: Path, tmp_path: Path, override: str, message: str
) -> None:
    cfg = load_config(None, [*tiny_overrides(fmnist_root), override])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        train(cfg, tmp_path / "r")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_random_init_baseline_rebuilds_the_initial_weights(fmnist_root: Path) -> None:
    import lightning.pytorch as pl

    from pairsmith.app.datamodule import load_splits
    from pairsmith.app.evaluate import random_init_encoder
    from pairsmith.app.module import ContrastiveModule
    from pairsmith.app.train import resolve

    cfg = load_config(None, tiny_overrides(fmnist_root))
    cfg = resolve(cfg, load_splits(cfg.data)[0])
    pl.seed_everything(cfg.trainer.seed, verbose=False)
    module = ContrastiveModule(cfg.to_dict())
    fresh = random_init_encoder(cfg)
    a, b = module.method.encoder().state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_keeps_the_requested_number_of_epoch_checkpoints(fmnist_root: Path, tmp_path: Path) -> None:
    over = [*tiny_overrides(fmnist_root), "trainer.epochs=3", "trainer.keep_checkpoints=2"]
    over += ["eval.final=false", "eval.online=false", "trainer.diagnostics_every=0"]
    train(load_config(None, over), tmp_path)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert names == ["epoch001.ckpt", "epoch002.ckpt", "last.ckpt"]
