"""The root ``vidret`` command: mounts every package's sub-commands, plus ``vidret serve``.

Heavy imports (torch, faiss, fastapi) happen inside the sub-commands, so ``vidret --help`` is instant.
"""

from __future__ import annotations

import sys

import typer

from indexing.cli import register as register_indexing
from indexing.errors import UserError
from training.cli import register as register_training

app = typer.Typer(
    name="vidret",
    help="Video retrieval trained under label noise: IMAE training, FAISS indexing, a FastAPI search service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
register_training(app)
register_indexing(app)


# Options that take several values after one flag (``--t 1 2 4``), as the CLI contract writes them.
MULTI_VALUE_FLAGS = ("--t", "--losses", "--rates")


def expand_multi_value_flags(argv: list[str], flags: tuple[str, ...] = MULTI_VALUE_FLAGS) -> list[str]:
    """Rewrite ``--t 1 2 4`` as ``--t 1 --t 2 --t 4`` (click options take one value per flag)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        out.append(tok)
        i += 1
        if tok in flags:
            if i < len(argv):  # the first value, whatever it looks like
                out.append(argv[i])
                i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                out.extend([tok, argv[i]])
                i += 1
    return out


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 1."""
    try:
        app(args=expand_multi_value_flags(sys.argv[1:]), prog_name="vidret")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
