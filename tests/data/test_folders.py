import numpy as np
import pytest
import torch

from pairsmith.data.folders import ImageFolder

Image = pytest.importorskip("PIL.Image")


def make_folder(root):
    rng = np.random.default_rng(0)
    for c, n in (("cat", 2), ("dog", 3)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, size=(10 + i, 12, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_image_folder(tmp_path):
    make_folder(tmp_path)
    ds = ImageFolder(tmp_path, size=8)
    assert ds.classes == ["cat", "dog"]
    assert len(ds) == 5
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]
    image, keys = ds[3]
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8
    assert keys == {"instance": 3, "label": 1}
    gray = ImageFolder(tmp_path, mode="L")
    assert gray[0][0].shape == (1, 10, 12)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="no image"):
        ImageFolder(tmp_path)
    with pytest.raises(ValueError, match="mode"):
        ImageFolder(tmp_path, mode="CMYK")
