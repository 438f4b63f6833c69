"""Domain errors map to HTTP codes through one table (service/errors.py): the closest listed ancestor's status, a
``detail`` without server paths, never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from indexing.backend import DuplicateIdError, ReadOnlyIndexError, UnknownIdError
from indexing.errors import UserError
from indexing.milvus import MilvusError
from service.app import create_app
from service.errors import ERRORS, answer_for
from service.settings import Settings


class AnotherMistake(UserError):
    """Not in the table: its ancestor's row."""


@pytest.mark.parametrize(
    ("error", "status", "detail"),
    [
        (UserError("bad /srv/data/x.npz"), 400, "bad x.npz"),
        (AnotherMistake("no"), 400, "no"),
        (UnknownIdError("unknown id 'a'"), 404, "unknown id 'a'"),
        (DuplicateIdError("id 'a' already exists"), 409, "id 'a' already exists"),
        (ReadOnlyIndexError("read-only"), 409, "read-only"),
        (MilvusError("timeout at /var/lib/milvus"), 503, "the index backend failed: timeout at milvus"),
    ],
)
def test_a_domain_error_gets_its_row(tmp_path, error: Exception, status: int, detail: str) -> None:
    app = create_app(Settings(index=tmp_path / "missing"), load_in_background=False)

    def boom() -> None:
        raise error

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert (r.status_code, r.json()) == (status, {"detail": detail})
    assert answer_for(error).status == status


def test_the_table_lists_only_exceptions_and_refuses_others() -> None:
    assert all(issubclass(cls, Exception) for cls in ERRORS)
    with pytest.raises(LookupError):
        answer_for(KeyError("x"))
