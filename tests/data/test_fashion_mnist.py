import gzip
import struct

import numpy as np
import pytest
import torch

from pairsmith.data import fashion_mnist as fm
from pairsmith.data.fashion_mnist import FashionMNIST, balanced_subset, read_idx


def write_idx(path, array, compress):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        data = gzip.compress(data)
    path.write_bytes(data)


def make_split(folder, prefix, n, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    suffix = ".gz" if compress else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_loads_generated_idx(tmp_path, compress):
    images, labels = make_split(tmp_path, "train", 50, compress)
    ds = FashionMNIST(tmp_path, train=True)
    assert len(ds) == 50
    assert ds.images.shape == (50, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert ds.labels.tolist() == labels.tolist()
    image, keys = ds[7]
    assert image.shape == (1, 28, 28)
    assert keys == {"instance": 7, "label": 7}


def test_test_split_and_subset(tmp_path):
    make_split(tmp_path, "t10k", 100)
    ds = FashionMNIST(tmp_path, train=False, subset=20, seed=3)
    assert len(ds) == 20
    assert torch.bincount(ds.labels, minlength=10).tolist() == [2] * 10
    again = FashionMNIST(tmp_path, train=False, subset=20, seed=3)
    assert torch.equal(ds.indices, again.indices)
    other = FashionMNIST(tmp_path, train=False, subset=20, seed=4)
    assert not torch.equal(ds.indices, other.indices)
    # instance key is the index inside the (subset) data set
    assert ds[5][1]["instance"] == 5


def test_env_var_search(tmp_path, monkeypatch):
    (tmp_path / "fashion-mnist").mkdir()
    make_split(tmp_path / "fashion-mnist", "train", 10)
    monkeypatch.setenv("PAIRSMITH_DATA", str(tmp_path))
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "nowhere")
    assert len(FashionMNIST()) == 10


def test_missing_files_message(tmp_path, monkeypatch):
    monkeypatch.delenv("PAIRSMITH_DATA", raising=False)
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        FashionMNIST()
    assert "PAIRSMITH_DATA" in str(e.value) and "--data-root" in str(e.value)
    with pytest.raises(FileNotFoundError):
        FashionMNIST(tmp_path)


def test_download_is_opt_in(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(fm, "download_files", lambda root: calls.append(root) or tmp_path)
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):
        FashionMNIST(tmp_path / "empty")
    assert calls == []


def test_corrupt_magic(tmp_path):
    make_split(tmp_path, "train", 10, compress=False)
    p = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(p.read_bytes())
    raw[2] = 0x0D  # float IDX type, not unsigned byte
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="magic number"):
        FashionMNIST(tmp_path)


def test_truncated_and_bad_gzip(tmp_path):
    make_split(tmp_path, "train", 10, compress=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)
    q = tmp_path / "bad.gz"
    q.write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(ValueError, match="gzip"):
        read_idx(q)


def test_count_mismatch(tmp_path):
    make_split(tmp_path, "train", 10)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(9), True)
    with pytest.raises(ValueError, match="labels"):
        FashionMNIST(tmp_path)


def test_balanced_subset_errors():
    labels = torch.arange(30) % 3
    assert len(balanced_subset(labels, 9)) == 9
    with pytest.raises(ValueError, match="multiple"):
        balanced_subset(labels, 10)
    with pytest.raises(ValueError, match="class"):
        balanced_subset(labels, 60)


def test_official_checksums_listed():
    assert set(fm.RESOURCES) == {
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    }
    assert all(len(v) == 32 for v in fm.RESOURCES.values())
