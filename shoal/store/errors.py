"""Errors a user can act on, and the one rule for names that become path components."""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 64
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class StoreError(Exception):
    """A store operation failed for a reason the user can act on."""


class DatasetNotFoundError(StoreError):
    pass


class InvalidNameError(StoreError):
    pass


class DiskFullError(StoreError):
    """A write ran out of room (disk full, quota, file size limit); the file was not written."""


class CorruptFileError(StoreError, ValueError):
    """A stored file cannot be read back (truncated, garbage); the message names it. A
    ValueError too, as json's own error is, so older ``except ValueError`` still holds."""


def validate_name(name: str, *, what: str = "dataset") -> str:
    """Return ``name`` if it is safe as a single path component, else raise InvalidNameError."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"{what} name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"{what} name {name[:20]!r}... is longer than {MAX_NAME_LENGTH} characters"
        )
    if name in (".", "..") or not _NAME_PATTERN.match(name) or ".." in name:
        raise InvalidNameError(
            f"{what} name {name!r} is not allowed: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (no path separators, no '..')"
        )
    return name
