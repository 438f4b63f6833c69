"""Domain errors -> HTTP answers, in one table.

Every exception type the packages below the service raise for a request's sake is listed here with its status and
how its message becomes the ``detail``; ``create_app`` registers one handler for the table. A subclass takes its
closest listed ancestor's row (``ReadOnlyIndexError`` is a ``UserError``: 409, not 400). Messages lose absolute
server paths (``redact_paths``); the full text goes to the server log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse

from indexing.backend import DuplicateIdError, ReadOnlyIndexError, UnknownIdError
from indexing.errors import UserError
from indexing.milvus import MilvusError
from service.deps import redact_paths

log = logging.getLogger("vidret.service")


@dataclass(frozen=True)
class ErrorAnswer:
    status: int
    detail: str  # the answer's detail; {} is the exception's message
    log_level: int = logging.INFO


ERRORS: dict[type[Exception], ErrorAnswer] = {
    UserError: ErrorAnswer(400, "{}"),  # a mistake in the request the index refuses, with the reason
    UnknownIdError: ErrorAnswer(404, "{}"),
    DuplicateIdError: ErrorAnswer(409, "{}"),
    ReadOnlyIndexError: ErrorAnswer(409, "{}"),  # a write to an index served with --mmap
    MilvusError: ErrorAnswer(503, "the index backend failed: {}", logging.ERROR),  # unreachable, overloaded
}


def answer_for(exc: Exception) -> ErrorAnswer:
    """The row of ``exc``'s closest listed ancestor."""
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    raise LookupError(f"{type(exc).__name__} is not a domain error of the table")


async def domain_error(_: Request, exc: Exception) -> JSONResponse:
    answer = answer_for(exc)
    log.log(answer.log_level, "%s (%d): %s", type(exc).__name__, answer.status, exc)
    return JSONResponse({"detail": answer.detail.format(redact_paths(str(exc)))}, status_code=answer.status)
