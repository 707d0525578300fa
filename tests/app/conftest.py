from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ps_app_helpers import write_fake_fmnist  # noqa: E402


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_fmnist(tmp_path_factory.mktemp("fmnist"))
