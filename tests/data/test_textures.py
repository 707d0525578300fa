import struct

import numpy as np
import pytest
import torch

from pairsmith.data.textures import Textures, load_patterns, read_pat


def write_pat(path, pixels, name="tex", magic=b"GPAT", version=1):
    h, w, bpp = pixels.shape
    name_b = name.encode() + b"\x00"
    header_size = 24 + len(name_b)
    header = struct.pack(">5I", header_size, version, w, h, bpp) + magic + name_b
    path.write_bytes(header + pixels.astype(np.uint8).tobytes())


def pattern(h, w, bpp, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, bpp), dtype=np.uint8)


def test_read_pat_roundtrip(tmp_path):
    px = pattern(70, 80, 3, 0)
    write_pat(tmp_path / "a.pat", px, name="Ä texture")
    pat = read_pat(tmp_path / "a.pat")
    assert pat.name == "Ä texture"
    assert np.array_equal(pat.pixels, px)


@pytest.mark.parametrize("bpp", [1, 2, 4])
def test_conversion_to_rgb(tmp_path, bpp):
    px = pattern(64, 64, bpp, 1)
    write_pat(tmp_path / "a.pat", px)
    rgb = read_pat(tmp_path / "a.pat").rgb()
    assert rgb.shape == (64, 64, 3)
    if bpp in (1, 2):
        assert np.array_equal(rgb[:, :, 1], px[:, :, 0])
    else:
        assert np.array_equal(rgb, px[:, :, :3])


def test_bad_files(tmp_path):
    write_pat(tmp_path / "m.pat", pattern(4, 4, 3, 0), magic=b"XPAT")
    with pytest.raises(ValueError, match="magic"):
        read_pat(tmp_path / "m.pat")
    write_pat(tmp_path / "v.pat", pattern(4, 4, 3, 0), version=2)
    with pytest.raises(ValueError, match="version"):
        read_pat(tmp_path / "v.pat")
    write_pat(tmp_path / "t.pat", pattern(4, 4, 3, 0))
    p = tmp_path / "t.pat"
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_pat(p)
    bad = tmp_path / "b.pat"
    bad.write_bytes(struct.pack(">5I", 30, 1, 2, 2, 7) + b"GPAT" + b"x\x00")
    with pytest.raises(ValueError, match="bytes_per_pixel"):
        read_pat(bad)


def test_dataset(tmp_path):
    write_pat(tmp_path / "a.pat", pattern(64, 64, 3, 0))
    write_pat(tmp_path / "b.pat", pattern(100, 70, 1, 1))
    write_pat(tmp_path / "c.pat", pattern(32, 32, 3, 2))  # too small: skipped
    ds = Textures(tmp_path, crop_size=16, crops_per_texture=5, seed=0)
    assert ds.classes == ["a", "b"]
    assert len(ds) == 10 and ds.images.shape == (10, 3, 16, 16) and ds.images.dtype == torch.uint8
    image, keys = ds[7]
    assert keys == {"instance": 7, "label": 1}
    # gray texture became RGB with equal channels
    assert torch.equal(image[0], image[2])
    again = Textures(tmp_path, crop_size=16, crops_per_texture=5, seed=0)
    assert torch.equal(ds.images, again.images)
    assert not torch.equal(
        ds.images, Textures(tmp_path, crop_size=16, crops_per_texture=5, seed=1).images
    )
    colour = Textures(tmp_path, crop_size=16, crops_per_texture=2, colour_only=True)
    assert colour.classes == ["a"]


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install gimp-data-extras"):
        Textures(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="gimp-data-extras"):
        load_patterns(tmp_path)  # exists but empty
    with pytest.raises(ValueError, match="crop_size"):
        Textures(tmp_path, crop_size=128)
