import builtins
import importlib.util

import pytest

from pairsmith.data.torchvision_sets import CIFAR10, STL10


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision present"
)
def test_clear_import_error(tmp_path):
    with pytest.raises(ImportError, match=r"pairsmith\[vision\]"):
        CIFAR10(tmp_path)


def test_import_error_when_blocked(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("blocked")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="vision"):
        CIFAR10(tmp_path)


def test_stl_split_checked(tmp_path):
    with pytest.raises(ValueError, match="split"):
        STL10(tmp_path, split="validation")
