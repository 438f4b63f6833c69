"""The one rule for video ids, labels and cameras, shared by every layer (docs/api.md, "Ids, labels and cameras").

A video id names one video in manifests, embeddings files, both index backends, the review store and the API's
URLs (``/v1/videos/{id}``), so it must mean one thing everywhere:

* one Unicode normalisation: ids are stored in NFC; ``normalize_id`` turns any input into it, ``check_id`` refuses
  an id that is not in it (what a store receives has been normalised at its edge);
* no ``/`` (an id is one URL path segment, never a path: ``a/video`` is not the video route of ``a``), and not
  ``.`` or ``..``;
* no control characters (C0, DEL, C1) and no line or paragraph separators;
* 1 to ``MAX_ID_BYTES`` bytes of UTF-8 (a fixed bound in bytes: the stored file names and the Milvus VARCHAR
  fields are bounded in bytes, not in characters).

Labels and cameras: at most ``MAX_TEXT_BYTES`` bytes of UTF-8, no control characters; empty is allowed (no camera,
or an unlabelled video). They are not normalised: a label must match the checkpoint's class names byte for byte.

The checks are whole-string checks (no regular expression anchored with ``$``, which matches before a final
newline). This module is the lowest layer: it imports nothing of vidret but ``indexing.errors``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from indexing.errors import UserError

MAX_ID_BYTES = 200
MAX_TEXT_BYTES = 200
_SEPARATORS = frozenset("/")
# Unicode's control characters (category Cc: C0, DEL, C1), the line and paragraph separators and lone surrogates
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMES = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL"}


class InvalidIdError(UserError, ValueError):
    """An id, label or camera that breaks the rule; the message says which rule (and never echoes a huge value)."""

    http_status = 422  # what the service answers when one reaches it


def _shown(value: str) -> str:
    return repr(value[:40] + ("…" if len(value) > 40 else ""))


def _control(value: str) -> str | None:
    """The first control character (or line / paragraph separator) of ``value``, described; None if none."""
    m = _CONTROL.search(value)
    if m is None:
        return None
    return _NAMES.get(m[0], f"the control character U+{ord(m[0]):04X}")


def _reason(vid: str) -> str | None:
    if not vid:
        return "must not be empty"
    size = len(vid.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        return f"is {size} bytes of UTF-8, more than {MAX_ID_BYTES}"
    if vid in (".", ".."):
        return "must not be '.' or '..'"
    sep = next((c for c in vid if c in _SEPARATORS), None)
    if sep is not None:
        return f"must not contain {sep!r} (an id is one URL path segment, not a path)"
    ctrl = _control(vid)
    if ctrl is not None:
        return f"must not contain {ctrl}"
    return None


def id_problem(vid: object) -> str | None:
    """Why ``vid`` is not a valid id as given (including: not in NFC), or None when it is."""
    if not isinstance(vid, str):
        return f"must be a string, not {type(vid).__name__}"
    reason = _reason(vid)
    if reason is None and not unicodedata.is_normalized("NFC", vid):
        return "is not in Unicode NFC form"
    return reason


def normalize_id(vid: str, what: str = "id") -> str:
    """``vid`` in NFC, checked; raises ``InvalidIdError`` naming ``what`` and the broken rule."""
    if not isinstance(vid, str):
        raise InvalidIdError(f"{what} must be a string, not {type(vid).__name__}")
    nfc = unicodedata.normalize("NFC", vid)
    reason = _reason(nfc)
    if reason is not None:
        raise InvalidIdError(f"{what} {_shown(vid)} {reason}")
    return nfc


def check_id(vid: str, what: str = "id") -> str:
    """``vid`` itself when it is a valid, NFC-normalised id; raises ``InvalidIdError`` otherwise (for stores:
    their callers normalise)."""
    reason = id_problem(vid)
    if reason is not None:
        raise InvalidIdError(f"{what} {_shown(str(vid))} {reason}")
    return vid


def _all_fine(values: list, limit: int, separators: bool) -> bool:
    """Whether every value passes (ids: and is in NFC), tested on all of them at once at C speed (index builds
    check millions); False means: look at each one, for the message."""
    try:
        joined = "\x00".join(values)  # NUL is refused in every value, so it cannot hide a problem
    except TypeError:  # not all strings
        return False
    if _CONTROL.search(joined.replace("\x00", "")) is not None:
        return False
    if separators:
        framed = f"\x00{joined}\x00"
        if "/" in joined or any(f"\x00{v}\x00" in framed for v in ("", ".", "..")):
            return False
        if not unicodedata.is_normalized("NFC", joined):
            return False
    if joined.isascii():
        longest = max(map(len, values), default=0)
    else:
        longest = max((len(v.encode("utf-8", "surrogatepass")) for v in values), default=0)
    return longest <= limit


def check_ids(ids: Iterable[str], what: str = "id") -> None:
    ids = list(ids)
    if _all_fine(ids, MAX_ID_BYTES, separators=True):
        return
    for vid in ids:
        check_id(vid, what)


def text_problem(value: object) -> str | None:
    """Why ``value`` is not a valid label or camera, or None."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        return f"is {size} bytes of UTF-8, more than {MAX_TEXT_BYTES}"
    ctrl = _control(value)
    if ctrl is not None:
        return f"must not contain {ctrl}"
    return None


def check_text(value: str, what: str = "label") -> str:
    """``value`` when it is a valid label or camera (``what`` names which); raises ``InvalidIdError``."""
    reason = text_problem(value)
    if reason is not None:
        raise InvalidIdError(f"{what} {_shown(str(value))} {reason}")
    return value


def check_texts(values: Iterable[str], what: str = "label") -> None:
    values = list(values)
    if _all_fine(values, MAX_TEXT_BYTES, separators=False):
        return
    for v in values:
        check_text(v, what)


def check_entries(ids: Iterable[str], labels: Iterable[str], cameras: Iterable[str]) -> None:
    """What both index backends check before storing: every id, label and camera."""
    check_ids(ids)
    check_texts(labels, "label")
    check_texts(cameras, "camera")
