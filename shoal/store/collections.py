"""Collections: named, persisted sets of samples (or boxes) of one dataset, with their story.

A finding leads somewhere only when it can be kept: "these 40 blurry night shots", "the
mislabelled shirts", "production images unlike anything in train". A collection holds the ids
(in the order they were added), a note, where it came from (page, selection or query, who, when)
and when it last changed. It lives beside the dataset, one JSON file per collection, written
atomically; changes to one dataset's collections take turns under a lock, so two people adding
at once never lose each other's samples.

Example:
    >>> from shoal.store import Workspace                                  # doctest: +SKIP
    >>> shelf = Collections(Workspace().open("pets"))                      # doctest: +SKIP
    >>> shelf.create("blurry", ["a1", "b7"], note="night shots", provenance={"page": "map"})  # doctest: +SKIP
    >>> shelf.add("blurry", ["c3"]).size                                   # doctest: +SKIP
    3
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shoal.store.dataset import Dataset
from shoal.store.errors import StoreError, validate_name
from shoal.store.files import read_json, write_json
from shoal.store.locks import exclusive

#: How a collection's ids are checked: sample ids, or the object ids of a detection dataset.
LEVELS = ("sample", "object")
#: A note is for people, not for data: kept short.
MAX_NOTE_CHARS = 2000


class CollectionNotFoundError(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Collection:
    name: str
    ids: tuple[str, ...]
    level: str = "sample"
    note: str = ""
    created_at: str = ""
    updated_at: str = ""
    created_by: str | None = None
    #: Where it came from: e.g. {"page": "map", "selection": "<token>"} or {"query": "..."}.
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.ids)

    def summary(self) -> dict[str, Any]:
        """Everything but the ids (for listings)."""
        payload = asdict(self)
        payload.pop("ids")
        return payload | {"size": self.size}


class Collections:
    """The collections of one dataset (``<dataset>/collections/<name>.json``)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.folder = dataset.root / "collections"

    # -- reading
    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.json"))

    def list(self) -> list[Collection]:
        return [self.get(name) for name in self.names()]

    def get(self, name: str) -> Collection:
        path = self._path(name)
        if not path.is_file():
            known = ", ".join(self.names()) or "none yet"
            raise CollectionNotFoundError(
                f"dataset {self.dataset.name!r} has no collection {name!r} (collections: {known})"
            )
        try:
            payload = read_json(path)
            payload["ids"] = tuple(str(i) for i in payload["ids"])
            return Collection(**payload)
        except (KeyError, TypeError, ValueError) as error:
            raise StoreError(
                f"collection {name!r} of dataset {self.dataset.name!r} cannot be read "
                f"({type(error).__name__}); delete it and save it again"
            ) from error

    # -- writing
    def create(
        self,
        name: str,
        ids: Iterable[str],
        *,
        level: str = "sample",
        note: str = "",
        provenance: Mapping[str, Any] | None = None,
        created_by: str | None = None,
        replace_existing: bool = False,
    ) -> Collection:
        """A new collection (``replace_existing`` overwrites one of the same name)."""
        validate_name(name, what="collection")
        if level not in LEVELS:
            raise StoreError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        with self._lock():
            if self._path(name).exists() and not replace_existing:
                raise StoreError(
                    f"dataset {self.dataset.name!r} already has a collection {name!r}: add to it, "
                    "or pick another name"
                )
            now = _now()
            collection = Collection(
                name=name,
                ids=self._checked(ids, level),
                level=level,
                note=_note(note),
                created_at=now,
                updated_at=now,
                created_by=created_by,
                provenance=dict(provenance or {}),
            )
            self._write(collection)
            return collection

    def add(self, name: str, ids: Iterable[str]) -> Collection:
        """Append the ids not in it yet (in the order given)."""
        with self._lock():
            current = self.get(name)
            present = set(current.ids)
            new = [i for i in self._checked(ids, current.level) if i not in present]
            return self._write(replace(current, ids=current.ids + tuple(new), updated_at=_now()))

    def remove(self, name: str, ids: Iterable[str]) -> Collection:
        with self._lock():
            current = self.get(name)
            dropped = {str(i) for i in ids}
            kept = tuple(i for i in current.ids if i not in dropped)
            return self._write(replace(current, ids=kept, updated_at=_now()))

    def set_note(self, name: str, note: str) -> Collection:
        with self._lock():
            return self._write(replace(self.get(name), note=_note(note), updated_at=_now()))

    def rename(self, name: str, new_name: str) -> Collection:
        validate_name(new_name, what="collection")
        with self._lock():
            current = self.get(name)
            if self._path(new_name).exists():
                raise StoreError(
                    f"dataset {self.dataset.name!r} already has a collection {new_name!r}"
                )
            renamed = self._write(replace(current, name=new_name, updated_at=_now()))
            self._path(name).unlink()
            return renamed

    def delete(self, name: str) -> None:
        with self._lock():
            self.get(name)  # a clear error for an unknown name
            self._path(name).unlink()

    # -- helpers
    def _path(self, name: str) -> Path:
        return self.folder / f"{validate_name(name, what='collection')}.json"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.dataset.check_current()
        with exclusive(self.folder / ".lock", what=f"the collections of {self.dataset.name!r}"):
            yield

    def _write(self, collection: Collection) -> Collection:
        write_json(self._path(collection.name), asdict(collection) | {"ids": list(collection.ids)})
        return collection

    def _checked(self, ids: Iterable[str], level: str) -> tuple[str, ...]:
        """The ids as strings, each once, in order; all of them known to the dataset."""
        wanted = list(dict.fromkeys(str(i) for i in ids))
        if level == "object":
            table = self.dataset.objects()
            if table is None:
                raise StoreError(f"dataset {self.dataset.name!r} has no objects (boxes) to collect")
            known = set(table["object_id"].astype(str))
        else:
            known = set(self.dataset.samples()["sample_id"].astype(str))
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise StoreError(
                f"{len(unknown):,} id(s) are not {level}s of dataset {self.dataset.name!r}, e.g. "
                f"{unknown[0]!r}; collect ids from this dataset"
            )
        return tuple(wanted)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _note(note: str) -> str:
    note = str(note or "")
    if len(note) > MAX_NOTE_CHARS:
        raise StoreError(
            f"a note holds up to {MAX_NOTE_CHARS:,} characters, this one {len(note):,}"
        )
    return note
