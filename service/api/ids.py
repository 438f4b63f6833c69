"""Video ids in URL paths: the ``vid`` path convertor and ``path_id`` (the rule itself is indexing/ids.py).

``{video_id:vid}`` takes the rest of the path, line breaks included: Starlette's ``path`` convertor stops before a
newline and its route pattern ends in ``$``, so ``/v1/videos/dup%0A`` reached ``dup``. ``path_id`` then normalises
the id (NFC) and answers 422 with the broken rule for any id the rule refuses (``dup\\n``, ``..``, ``a/../b``).
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.convertors import Convertor, register_url_convertor

from indexing.ids import InvalidIdError, normalize_id


class IdConvertor(Convertor):
    regex = "(?s:.+)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("vid", IdConvertor())


def path_id(video_id: str) -> str:
    """A video id from a URL path, in NFC, or 422 naming the rule it breaks."""
    try:
        return normalize_id(video_id, "video id")
    except InvalidIdError as exc:
        raise HTTPException(422, str(exc)) from None
