"""The root ``vidret`` command: mounts every package's sub-commands, plus ``vidret serve``.

Heavy imports (torch, faiss, fastapi) happen inside the sub-commands, so ``vidret --help`` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

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


@app.command("serve")
def serve(
    index: Path | None = typer.Option(None, help="Index folder (env VIDRET_INDEX)."),
    checkpoint: Path | None = typer.Option(None, help="Checkpoint to embed uploads (env VIDRET_CHECKPOINT)."),
    host: str | None = typer.Option(None, help="Bind address (env VIDRET_HOST, default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (env VIDRET_PORT, default 8000)."),
    api_key: str | None = typer.Option(
        None,
        help="Bearer key for adds/deletes (env VIDRET_API_KEY); without it, "
        "writes are refused unless --host is loopback.",
    ),
    read_api_key: str | None = typer.Option(
        None,
        help="Bearer key for searches and listings; the --api-key opens "
        "them too (env VIDRET_READ_API_KEY; default: reads are open).",
    ),
    allow_unauthenticated_writes: bool | None = typer.Option(
        None,
        "--allow-unauthenticated-writes",
        help="Let anyone who reaches a non-loopback --host add and delete "
        "videos without --api-key (env VIDRET_ALLOW_UNAUTHENTICATED_WRITES).",
    ),
    max_upload_mb: float | None = typer.Option(None, help="Upload size limit (env VIDRET_MAX_UPLOAD_MB, 64)."),
    max_k: int | None = typer.Option(None, help="Largest k (env VIDRET_MAX_K, 100)."),
    max_frames: int | None = typer.Option(None, help="Longest upload in frames (env VIDRET_MAX_FRAMES, 3000)."),
    max_eval_queries: int | None = typer.Option(
        None, help="Most queries per /v1/evaluate (env VIDRET_MAX_EVAL_QUERIES, 1000)."
    ),
    device: str | None = typer.Option(None, help="Model device auto|cpu|cuda (env VIDRET_DEVICE)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve the search API and web page (GET / ; GET /docs for the API)."""
    from pydantic import ValidationError

    from service.settings import Settings

    overrides = {
        k: v
        for k, v in {
            "index": index,
            "checkpoint": checkpoint,
            "host": host,
            "port": port,
            "api_key": api_key,
            "read_api_key": read_api_key,
            "allow_unauthenticated_writes": allow_unauthenticated_writes,
            "max_upload_mb": max_upload_mb,
            "max_k": max_k,
            "max_frames": max_frames,
            "max_eval_queries": max_eval_queries,
            "device": device,
        }.items()
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"setting {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    if not (settings.index / "index.json").is_file():
        raise UserError(f"{settings.index}: not an index folder (build one with `vidret index build`)")
    if settings.checkpoint is not None and not settings.checkpoint.is_file():
        raise UserError(f"--checkpoint {settings.checkpoint}: file not found")
    import uvicorn

    from service.app import create_app

    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=log_level, timeout_graceful_shutdown=5
    )


review_app = typer.Typer(
    help="The label review of an index (decisions made on the web page or through the API).", no_args_is_help=True
)
app.add_typer(review_app, name="review")


@review_app.command("export")
def review_export(
    index: Path = typer.Option(..., help="Index folder (its review.sqlite holds the decisions)."),
    out: Path = typer.Option(..., help="Manifest CSV to write: path,label,id,camera."),
) -> None:
    """Write the cleaned manifest: every indexed video with the review's relabels applied and its drops left out
    (as GET /v1/review/export). Paths of files inside the index folder are written relative to OUT's folder."""
    from service.review import export_index

    res = export_index(index, out)
    note = f", {res.without_path} without a stored path left out" if res.without_path else ""
    typer.echo(f"wrote {res.rows} videos to {out} ({res.dropped} dropped, {res.relabelled} relabelled{note})")


# Options that take several values after one flag (``--t 1 2 4``), as the CLI contract writes them.
MULTI_VALUE_FLAGS = ("--t", "--losses", "--rates", "--k")


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
