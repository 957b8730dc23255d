"""The one registry type: named, pluggable parts of one kind.

Embedding models (:mod:`shoal.embedding.models`), outlier scorers (:mod:`shoal.analysis.outliers`),
two-sample tests (:mod:`shoal.analysis.two_sample`) and job kinds (:mod:`shoal.jobs`) each keep a
``Registry`` and add to it with its decorator. This package sits below every layer and imports
nothing, so the kernels can use it without importing Shoal.

One policy for a duplicate name: registering the same code again (a module re-imported, as
Streamlit does on every rerun) replaces the entry; different code under a taken name raises.

>>> colours = Registry[str]("colour")
>>> colours.register("sea", "#2E86AB")
'#2E86AB'
>>> colours["sea"], "sky" in colours, colours.names()
('#2E86AB', False, ['sea'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered; the message lists the ones that are."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    """Entries of one kind by name. ``kind`` names them in error messages ("outlier scorer")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` (see the module's duplicate policy); returns ``entry``."""
        existing = self._entries.get(name)
        if existing is not None and origin(existing) != origin(entry):
            raise ValueError(
                f"{self.kind} {name!r} is already registered by {origin(existing)}; "
                f"choose another name for {origin(entry)}"
            )
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget ``name`` (a plug-in unloaded, a test cleaning up); unknown names are ignored."""
        self._entries.pop(name, None)

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers the decorated object itself."""
        return lambda entry: self.register(name, entry)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def get(self, name: str) -> T | None:
        return self._entries.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]


def origin(entry: object) -> str:
    """Where an entry's code lives: ``module.qualname`` of it, or of its ``function`` attribute
    (for records that wrap a function, such as an outlier scorer's spec)."""
    target = getattr(entry, "function", entry)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(target)
