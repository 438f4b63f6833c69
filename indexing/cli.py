"""``vidret index`` and ``vidret evaluate``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount the indexing sub-commands on the root app."""
