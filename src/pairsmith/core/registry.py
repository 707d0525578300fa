"""Registry of components, each tagged with its place in the survey's taxonomy.

Names are dotted and mirror the folders (``negatives.false_negative_removal.fnc``).
``create_*`` drops ``None`` keyword arguments so that a config's unset options do not
override a component's own defaults (DESIGN.md, "Packages").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

KINDS = ("curator", "loss", "method", "source")

#: The leaves of the survey's Figure 1 (sections 3 and 4): (branch, leaf).
TAXONOMY: tuple[tuple[str, str], ...] = (
    ("positives", "single_instance"),
    ("positives", "embedding_based"),
    ("positives", "synthetic"),
    ("positives", "supervised"),
    ("positives", "attribute_based"),
    ("positives", "cross_modal"),
    ("negatives", "hard_negative_selection"),
    ("negatives", "false_negative_removal"),
    ("negatives", "synthetic_hard_negatives"),
)

SURVEY_SECTIONS: dict[tuple[str, str], str] = {
    ("positives", "single_instance"): "3.1",
    ("positives", "embedding_based"): "3.2.1",
    ("positives", "synthetic"): "3.2.2",
    ("positives", "supervised"): "3.2.3",
    ("positives", "attribute_based"): "3.2.4",
    ("positives", "cross_modal"): "3.2.5",
    ("negatives", "hard_negative_selection"): "4.1",
    ("negatives", "false_negative_removal"): "4.2",
    ("negatives", "synthetic_hard_negatives"): "4.3",
}


@dataclass(frozen=True)
class Entry:
    """One registered component.

    Attributes:
        kind: ``curator``, ``loss``, ``method`` or ``source``.
        name: dotted name mirroring the folder.
        obj: the class or factory.
        taxonomy: (branch, leaf) of the survey's Figure 1.
        summary: first line of the docstring.
    """

    kind: str
    name: str
    obj: Callable[..., Any]
    taxonomy: tuple[str, str]

    @property
    def summary(self) -> str:
        """The first line of the component's docstring."""
        doc = (self.obj.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @property
    def section(self) -> str:
        """The survey section of the taxonomy leaf."""
        return SURVEY_SECTIONS[self.taxonomy]


_REGISTRY: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}


def _register(kind: str, name: str, taxonomy: tuple[str, str]) -> Callable[[T], T]:
    if taxonomy not in SURVEY_SECTIONS:
        raise ValueError(f"taxonomy must be one of {list(SURVEY_SECTIONS)}, got {taxonomy!r}")
    if not name or name != name.strip() or " " in name:
        raise ValueError(f"name must be a dotted identifier, got {name!r}")

    def deco(obj: T) -> T:
        table = _REGISTRY[kind]
        old = table.get(name)
        # A module reload re-registers the same component: allow it; anything else clashes.
        if old is not None and _qualname(old.obj) != _qualname(obj):
            raise ValueError(f"{kind} {name!r} is already registered to {table[name].obj!r}")
        table[name] = Entry(kind, name, obj, taxonomy)  # type: ignore[arg-type]
        return obj

    return deco


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"


def register_curator(name: str, taxonomy: tuple[str, str]) -> Callable[[T], T]:
    """Register a ``Pairs -> Pairs`` curator class under a dotted name."""
    return _register("curator", name, taxonomy)


def register_loss(name: str, taxonomy: tuple[str, str]) -> Callable[[T], T]:
    """Register a loss class under a dotted name."""
    return _register("loss", name, taxonomy)


def register_method(name: str, taxonomy: tuple[str, str]) -> Callable[[T], T]:
    """Register a training recipe under a dotted name."""
    return _register("method", name, taxonomy)


def register_source(name: str, taxonomy: tuple[str, str]) -> Callable[[T], T]:
    """Register a candidate source (queue, memory) under a dotted name."""
    return _register("source", name, taxonomy)


def _create(kind: str, name: str, **kwargs: Any) -> Any:
    _import_all()
    table = _REGISTRY[kind]
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; registered: {sorted(table)}")
    # None means "not set": keep the component's own default.
    return table[name].obj(**{k: v for k, v in kwargs.items() if v is not None})


def create_curator(name: str, **kwargs: Any) -> Any:
    """Instantiate a registered curator; ``None`` arguments are dropped."""
    return _create("curator", name, **kwargs)


def create_loss(name: str, **kwargs: Any) -> Any:
    """Instantiate a registered loss; ``None`` arguments are dropped."""
    return _create("loss", name, **kwargs)


def create_method(name: str, **kwargs: Any) -> Any:
    """Instantiate a registered method; ``None`` arguments are dropped."""
    return _create("method", name, **kwargs)


def create_source(name: str, **kwargs: Any) -> Any:
    """Instantiate a registered source; ``None`` arguments are dropped."""
    return _create("source", name, **kwargs)


def list_entries(kind: str | None = None) -> list[Entry]:
    """Every registered component (of one kind), sorted by kind then name."""
    _import_all()
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    kinds = KINDS if kind is None else (kind,)
    return [_REGISTRY[k][n] for k in kinds for n in sorted(_REGISTRY[k])]


def list_curators() -> list[str]:
    """Names of the registered curators."""
    return [e.name for e in list_entries("curator")]


def list_losses() -> list[str]:
    """Names of the registered losses."""
    return [e.name for e in list_entries("loss")]


def list_methods() -> list[str]:
    """Names of the registered methods."""
    return [e.name for e in list_entries("method")]


def iter_taxonomy() -> Iterator[tuple[tuple[str, str], list[Entry]]]:
    """Each taxonomy leaf with the components registered under it."""
    entries = list_entries()
    for leaf in TAXONOMY:
        yield leaf, [e for e in entries if e.taxonomy == leaf]


def _import_all() -> None:
    """Import the component packages so their decorators run (library only, no app)."""
    import importlib
    import pkgutil

    import pairsmith

    for pkg in ("positives", "negatives", "losses", "sources", "methods"):
        mod = importlib.import_module(f"pairsmith.{pkg}")
        for info in pkgutil.walk_packages(mod.__path__, prefix=f"pairsmith.{pkg}."):
            importlib.import_module(info.name)
    del pairsmith
