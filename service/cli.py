"""The root ``vidret`` command: mounts every package's sub-commands, plus ``vidret serve``.

Heavy imports (torch, faiss, fastapi) happen inside the sub-commands, so ``vidret --help`` is instant.
"""

from __future__ import annotations

import os
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
    mmap: bool | None = typer.Option(
        None,
        "--mmap",
        help="Serve the FAISS index memory-mapped and read-only: IVF lists and vectors stay on disk, adds and "
        "deletes get 409 (env VIDRET_MMAP).",
    ),
    backend: str | None = typer.Option(
        None,
        help="faiss (the --index folder) | milvus (a Milvus collection; --index then holds uploads and reviews) "
        "(env VIDRET_BACKEND, default faiss).",
    ),
    milvus_uri: str | None = typer.Option(
        None, help="Milvus URI, or a local .db file for milvus-lite (env VIDRET_MILVUS_URI)."
    ),
    milvus_collection: str | None = typer.Option(
        None, help="Milvus collection (env VIDRET_MILVUS_COLLECTION, default vidret)."
    ),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve the search API and web page (GET / ; the API's schema at GET /openapi.json)."""
    given = {k: v for k, v in locals().items() if v is not None and k != "log_level"}  # the flags set: settings
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        settings = Settings(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"setting {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    _check_served(settings)
    from service.app import create_app
    from service.server import run

    run(create_app(settings), settings, log_level=log_level)  # with the slow-client limits of service/server.py


def _check_served(settings) -> None:
    """Refuse to start without what ``settings`` names: the index folder, or the Milvus collection; the checkpoint."""
    if settings.backend == "milvus":
        from indexing.backend import open_index

        open_index(
            "milvus",
            milvus_uri=settings.milvus_uri,
            milvus_collection=settings.milvus_collection,
            milvus_token=settings.milvus_token,
        ).close()
    elif not (settings.index / "index.json").is_file():
        raise UserError(f"{settings.index}: not an index folder (build one with `vidret index build`)")
    else:  # held by this process until it exits (the app takes the same hold): a second server fails here
        from indexing.lock import lock_folder

        lock_folder(settings.index)
    if settings.checkpoint is not None and not settings.checkpoint.is_file():
        raise UserError(f"--checkpoint {settings.checkpoint}: file not found")


review_app = typer.Typer(
    help="The label review of an index (decisions made on the web page or through the API).", no_args_is_help=True
)
app.add_typer(review_app, name="review")


@review_app.command("export")
def review_export(
    index: Path = typer.Option(..., help="Index folder (its review.sqlite holds the decisions)."),
    out: Path = typer.Option(..., help="Manifest CSV to write: path,label,id,camera."),
    backend: str = typer.Option("faiss", help="faiss | milvus: where the indexed videos live (as `vidret serve`)."),
    milvus_uri: str | None = typer.Option(None, help="With --backend milvus: the URI `vidret serve` was given."),
    milvus_collection: str = typer.Option("vidret", help="With --backend milvus: the collection."),
) -> None:
    """Write the cleaned manifest: every indexed video with the review's relabels applied and its drops left out
    (as GET /v1/review/export). Paths of files inside the index folder are written relative to OUT's folder."""
    from service.review import export_index

    if backend not in ("faiss", "milvus"):
        raise UserError(f"--backend must be faiss or milvus, got {backend!r}")
    metas = None
    if backend == "milvus":
        from indexing.backend import open_index

        if not milvus_uri:
            raise UserError("--backend milvus needs --milvus-uri")
        index_ = open_index(
            "milvus",
            milvus_uri=milvus_uri,
            milvus_collection=milvus_collection,
            milvus_token=os.environ.get("VIDRET_MILVUS_TOKEN"),
        )
        try:
            metas = index_.page(0, None)
        finally:
            index_.close()
    res = export_index(index, out, metas=metas)
    note = f", {res.without_path} without a stored path left out" if res.without_path else ""
    typer.echo(f"wrote {res.rows} videos to {out} ({res.dropped} dropped, {res.relabelled} relabelled{note})")


@app.command("health")
def health(
    url: str = typer.Option("http://127.0.0.1:8000/health", help="The URL to probe (http or https)."),
    timeout: float = typer.Option(4.0, min=0.1, help="Seconds to wait for the answer."),
) -> None:
    """Exit 0 when URL answers 200 within TIMEOUT seconds, 1 otherwise, with one line saying which. The images'
    HEALTHCHECK runs it: its arguments hold no spaces, so every container engine passes them through intact."""
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        typer.echo(f"unhealthy: --url {url!r} is not an http(s) URL", err=True)
        raise typer.Exit(1)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # scheme checked above
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:  # refused, timed out, unknown host, malformed URL
        typer.echo(f"unhealthy: {url}: {getattr(exc, 'reason', None) or exc}", err=True)
        raise typer.Exit(1) from None
    if status != 200:
        typer.echo(f"unhealthy: {url} answered {status}", err=True)
        raise typer.Exit(1)
    typer.echo(f"healthy: {url} answered 200")


# Options that take several values after one flag (``--t 1 2 4``), as the CLI contract writes them.
MULTI_VALUE_FLAGS = ("--t", "--losses", "--noise", "--k", "--embeddings")


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
