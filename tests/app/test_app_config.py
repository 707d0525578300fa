"""Config parsing, typed overrides, unknown-key and bad-value errors, the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pairsmith.app.config import (
    Config,
    ConfigError,
    dump_config,
    load_config,
    parse_override,
    section_keys,
)

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_defaults_are_the_fashion_mnist_simclr_setup() -> None:
    cfg = load_config()
    assert (cfg.data.name, cfg.method.name, cfg.model.backbone) == (
        "fashion_mnist", "simclr", "small_cnn",
    )  # fmt: skip
    assert (cfg.eval.knn_k, cfg.eval.knn_t) == (200, 0.1)


def test_overrides_are_typed_by_yaml() -> None:
    cfg = load_config(
        None,
        [
            "optim.lr=0.06",
            "trainer.epochs=3",
            "trainer.deterministic=true",
            "data.subset=null",
            "views.options.scale=[0.5, 1.0]",
            "method.options.temperature=0.2",
            "method.options={temperature: 0.3, proj_dim: 64}",
            "eval.linear.enabled=yes",
            "imports=[json]",
        ],
    )
    assert cfg.optim.lr == 0.06 and cfg.trainer.epochs == 3 and cfg.trainer.deterministic is True
    assert cfg.data.subset is None
    assert cfg.views.options == {"scale": [0.5, 1.0]}
    assert cfg.method.options == {"temperature": 0.3, "proj_dim": 64}  # later override wins
    assert cfg.eval.linear.enabled is True and cfg.imports == ["json"]


def test_numbers_yaml_reads_as_strings_are_accepted() -> None:
    # YAML 1.1 parses "1e-3" (no dot) as a string.
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == pytest.approx(1e-3)
    assert load_config(None, ["trainer.epochs=2.0"]).trainer.epochs == 2


def test_file_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.5\ntrainer:\n  epochs: 4\n")
    cfg = load_config(f, ["trainer.epochs=5"])
    assert (cfg.optim.lr, cfg.trainer.epochs, cfg.optim.momentum) == (0.5, 5, 0.9)


def test_dump_and_reload_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["views.mean=[0.3]", "method.options={temperature: 0.2}"])
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "optim.lrr=1",
            "unknown key 'optim.lrr' (did you mean 'optim.lr'?); valid keys in 'optim'",
        ),
        (
            "optimm.lr=1",
            "unknown key 'optimm' (did you mean 'optim'?); valid keys at the top level",
        ),
        ("eval.linear.epochz=3", "unknown key 'eval.linear.epochz'"),
        ("trainer.foo.bar=1", "unknown key 'trainer.foo'"),
        ("optim.lr=fast", "optim.lr must be a number, got 'fast'"),
        ("trainer.epochs=1.5", "trainer.epochs must be an integer"),
        ("trainer.deterministic=2", "trainer.deterministic must be true or false"),
        ("data.name=mnist", "data.name must be one of"),
        ("optim.name=lars", "optim.name must be one of"),
        ("views.preset=byol", "views.preset must be one of"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("data.batch_size=0", "data.batch_size must be > 0"),
        ("trainer.devices=3", "divisible by trainer.devices"),
        ("optim.lr.x=1", "'optim.lr' is 0.12, not a section"),
        ("optim.lr", "must look like section.key=value"),
        ("=1", "empty key"),
        ("optim.lr=[1", "not valid YAML"),
        ("method.options={temperature:0.2}", "YAML needs a space after the colon"),
    ],
)
def test_bad_keys_and_values_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optim.lrr=1"])
    for key in section_keys("optim"):
        assert key in str(e.value)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  epoch: 3\n")
    with pytest.raises(
        ConfigError, match="unknown key 'trainer.epoch'.*did you mean 'trainer.epochs'"
    ):
        load_config(f)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_parse_override() -> None:
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=") == (["a"], None)
    assert parse_override("a=x=y") == (["a"], "x=y")


def test_every_section_is_documented() -> None:
    assert set(Config().to_dict()) == {
        "data", "views", "model", "method", "optim", "trainer", "eval", "imports",
    }  # fmt: skip


EXPECTED = {
    "default", "simclr_fmnist", "mocov2_fmnist", "supcon_fmnist", "simclr_fnc_fmnist",
    "simclr_fnc_attract_fmnist", "simclr_dcl_fmnist", "simclr_hcl_fmnist",
    "mocov2_mochi_fmnist", "nnclr_fmnist", "simclr_textures",
}  # fmt: skip


def test_all_recipe_configs_are_shipped() -> None:
    assert EXPECTED <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_builds_its_method_and_views(path: Path) -> None:
    """Every option of every shipped config is accepted by the component it configures."""
    from pairsmith.app.module import build_method, build_views, resolve_method_name
    from pairsmith.core.registry import list_methods

    cfg = load_config(path)
    name = cfg.method.name
    if name not in list_methods() and f"methods.{name}" not in list_methods():
        pytest.skip(f"method {name!r} is not registered yet")
    resolve_method_name(name)
    channels = 3 if cfg.data.name == "textures" else 1
    side = 32 if cfg.data.name == "textures" else 28
    stats = [
        f"views.size={side}",
        f"views.mean={[0.5] * channels}",
        f"views.std={[0.5] * channels}",
    ]
    cfg = load_config(path, [f"model.in_channels={channels}", *stats])
    method = build_method(cfg)
    views = build_views(cfg.views, channels, method.num_views)
    assert views.num_views == method.num_views
