import pytest
import torch

from pairsmith.data.views import (
    MoCoV2Views,
    MultiCropViews,
    SimCLRViews,
    Views,
    ViewSpec,
    normalize,
    to_float,
)

pytest.importorskip("kornia")


def images(b=6, c=1, s=28):
    return torch.randint(
        0, 256, (b, c, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


@pytest.mark.parametrize("factory", [SimCLRViews, MoCoV2Views])
@pytest.mark.parametrize("channels", [1, 3])
def test_presets_shapes_and_dtypes(factory, channels):
    views = factory(size=24, channels=channels)
    out = views(images(c=channels))
    assert len(out) == 2
    for v in out:
        assert v.shape == (6, channels, 24, 24) and v.dtype == torch.float32
        assert torch.isfinite(v).all()
    assert not torch.equal(out[0], out[1])


def test_float_input_equals_uint8_input():
    x = images()
    views = SimCLRViews(28, 1)
    torch.manual_seed(1)
    a = views(x)
    torch.manual_seed(1)
    b = views(x.float() / 255)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v)


def test_deterministic_under_manual_seed():
    x = images(c=3, s=32)
    views = SimCLRViews(32, 3)
    torch.manual_seed(0)
    a = views(x)
    torch.manual_seed(0)
    b = views(x)
    torch.manual_seed(1)
    c = views(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_grayscale_pipeline_has_no_colour_ops():
    gray = SimCLRViews(28, 1)
    rgb = SimCLRViews(28, 3)
    names = lambda v: {type(m).__name__ for m in v.modules()}  # noqa: E731
    assert "RandomGrayscale" not in names(gray)
    assert {"ColorJitter", "RandomGrayscale"} <= names(rgb)
    # on one channel only the intensity part of the jitter survives, and only if asked
    for m in gray.modules():
        if type(m).__name__ == "ColorJitter":
            assert "saturation=0.0, hue=0.0" in repr(m)
    assert "ColorJitter" not in names(SimCLRViews(28, 1, intensity_on_gray=False))
    assert len([m for m in gray.modules() if type(m).__name__ == "ColorJitter"]) == 2
    assert gray(images())[0].shape == (6, 1, 28, 28)


def test_normalisation_matches_eval_path():
    # With crops covering the whole image and no other op, views equal `normalize`.
    spec = ViewSpec(size=28, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0, gray_p=0)
    views = Views([spec], channels=1, mean=(0.3,), std=(0.2,))
    x = images()
    torch.testing.assert_close(views(x)[0], normalize(x, (0.3,), (0.2,)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(views.normalize(x), normalize(x, (0.3,), (0.2,)))


def test_multicrop():
    views = MultiCropViews(global_size=28, local_size=12, n_local=3, channels=1)
    out = views(images())
    assert [tuple(v.shape[-2:]) for v in out] == [(28, 28)] * 2 + [(12, 12)] * 3
    assert views.num_views == 5


def test_extra_ops_run():
    views = SimCLRViews(
        28, 1, affine_p=1.0, degrees=10, translate=0.1, erase_p=1.0, blur_p=1.0, solarize_p=1.0
    )
    assert views(images())[0].shape == (6, 1, 28, 28)


def test_errors():
    with pytest.raises(ValueError, match="channels"):
        SimCLRViews(28, 1)(images(c=3))
    with pytest.raises(ValueError, match="scale"):
        ViewSpec(size=28, scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="flip_p"):
        ViewSpec(size=28, flip_p=2)
    with pytest.raises(ValueError, match="mean"):
        Views([ViewSpec(28)], channels=3, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="n_local"):
        MultiCropViews(28, 12, n_local=-1)
    with pytest.raises(ValueError, match="B, C, H, W"):
        to_float(torch.zeros(3, 28, 28))
    with pytest.raises(ValueError, match="uint8"):
        to_float(torch.zeros(1, 1, 2, 2, dtype=torch.int32))
