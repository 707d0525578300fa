"""Registry: names mirror folders, taxonomy coverage, create_* drops None, CLI list."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pairsmith.core import registry
from pairsmith.core.registry import (
    SURVEY_SECTIONS,
    create_curator,
    list_entries,
    register_curator,
)


def test_every_entry_name_mirrors_its_module():
    for e in list_entries():
        module = e.obj.__module__
        assert module.startswith("pairsmith."), e
        if e.kind in ("curator", "method"):
            # positives.supervised.supcon lives in pairsmith/positives/supervised/supcon.py
            assert module == "pairsmith." + e.name, (e.name, module)
        assert e.taxonomy in SURVEY_SECTIONS


def test_the_five_issue_curators_are_registered():
    names = set(registry.list_curators())
    expected = {
        "positives.supervised.supcon",
        "negatives.false_negative_removal.fnc",
        "negatives.false_negative_removal.dcl",
        "negatives.hard_negative_selection.hcl",
        "negatives.hard_negative_selection.mochi",
        "positives.embedding_based.nnclr",
    }
    missing = expected - names
    assert not missing, f"not registered yet: {sorted(missing)}"


def test_create_drops_none_arguments():
    @register_curator("positives.supervised._test_dummy", taxonomy=("positives", "supervised"))
    class Dummy:
        def __init__(self, k: int = 7) -> None:
            self.k = k

    try:
        assert create_curator("positives.supervised._test_dummy", k=None).k == 7
        assert create_curator("positives.supervised._test_dummy", k=3).k == 3
    finally:
        registry._REGISTRY["curator"].pop("positives.supervised._test_dummy")


def test_errors():
    with pytest.raises(KeyError, match="unknown curator"):
        create_curator("negatives.nope")
    with pytest.raises(ValueError, match="taxonomy"):
        register_curator("x.y", taxonomy=("negatives", "nope"))
    with pytest.raises(ValueError, match="kind"):
        list_entries("widget")


def test_python_m_pairsmith_list_prints_one_line_per_component():
    out = subprocess.run(
        [sys.executable, "-m", "pairsmith", "list"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(out) == len(list_entries())
    for line, e in zip(out, list_entries(), strict=False):
        assert e.name in line and "/".join(e.taxonomy) in line


def test_library_does_not_import_the_app():
    code = (
        "import sys, pairsmith, pairsmith.core.registry as r; r.list_entries(); "
        "bad=[m for m in sys.modules if m.startswith(('pairsmith.app','lightning','kornia','matplotlib'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_reregistering_the_same_component_is_allowed_and_clashes_are_not():
    """A module reload registers the same qualified name again; another object clashes."""
    entry = list_entries("curator")[0]
    register_curator(entry.name, taxonomy=entry.taxonomy)(entry.obj)  # same object: fine

    class Other:
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_curator(entry.name, taxonomy=entry.taxonomy)(Other)
