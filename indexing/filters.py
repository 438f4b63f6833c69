"""Metadata filters of a search: ``label``, ``camera`` and ``exclude_camera``, combined with AND.

The FAISS backend (indexing/faiss_index.py) turns a filter into an ID selector over the rows whose metadata match; the
Milvus backend (indexing/milvus.py) turns it into a boolean expression, with every value written as an escaped
string literal (``milvus_literal``) so that no value can end the literal and add terms of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from indexing.errors import UserError

# Inside a double-quoted Milvus string literal: the characters that would end it or start an escape. Every other
# character stands for itself, except line breaks: Milvus's expression parser refuses them raw and does not read
# \n or \r escapes as line breaks, so a value holding one cannot be written (LINE_BREAKS).
_MILVUS_ESCAPES = {"\\": "\\\\", '"': '\\"'}
LINE_BREAKS = ("\n", "\r")


@dataclass(frozen=True)
class SearchFilter:
    """Hits must have this ``label`` and this ``camera`` and must not have camera ``exclude_camera`` (None: any)."""

    label: str | None = None
    camera: str | None = None
    exclude_camera: str | None = None

    @classmethod
    def of(cls, value: SearchFilter | dict[str, Any] | None) -> SearchFilter | None:
        """A filter from a dict of its fields (None, or a filter that constrains nothing, gives None)."""
        if value is None:
            return None
        f = value if isinstance(value, SearchFilter) else cls(**value)
        return None if f.empty else f

    @property
    def empty(self) -> bool:
        return self.label is None and self.camera is None and self.exclude_camera is None

    def matches(self, label: str, camera: str) -> bool:
        return (
            (self.label is None or label == self.label)
            and (self.camera is None or camera == self.camera)
            and (self.exclude_camera is None or camera != self.exclude_camera)
        )

    def milvus_expr(self) -> str:
        """The filter as a Milvus boolean expression over the ``label`` and ``camera`` fields ("" for none)."""
        terms = []
        if self.label is not None:
            terms.append(f"label == {milvus_literal(self.label)}")
        if self.camera is not None:
            terms.append(f"camera == {milvus_literal(self.camera)}")
        if self.exclude_camera is not None:
            terms.append(f"camera != {milvus_literal(self.exclude_camera)}")
        return " and ".join(terms)


def milvus_literal(value: str) -> str:
    """``value`` as a double-quoted Milvus string literal that denotes exactly ``value`` (quotes and backslashes
    escaped; a line break is a UserError)."""
    if not isinstance(value, str):
        raise TypeError(f"a filter value must be a string, got {type(value).__name__}")
    if any(c in value for c in LINE_BREAKS):
        raise UserError(f"{value[:40]!r}: a value with a line break cannot be written in a Milvus expression")
    return '"' + "".join(_MILVUS_ESCAPES.get(ch, ch) for ch in value) + '"'
