"""Terminal helpers shared by the library and the command line: progress bars on stderr."""

from __future__ import annotations


def progress_bar(description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=_stderr_console(),
        transient=False,
    )


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)
