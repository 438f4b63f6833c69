"""The root ``vidret`` command: mounts every package's sub-commands, plus ``vidret serve``.

Heavy imports (torch, faiss, fastapi) happen inside the sub-commands, so ``vidret --help`` is instant.
"""

from __future__ import annotations

import inspect
import os
import sys
import typing
from pathlib import Path
from typing import Any

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


def serve_options() -> list[inspect.Parameter]:
    """One typer option per ``Settings`` field (service/settings.py): ``--max-k`` for ``max_k``, its help the
    field's description with its ``VIDRET_*`` variable and default. A flag that is not given leaves the field to
    its environment variable, then its default; bools are switches (``--mmap``). A field whose
    ``json_schema_extra`` says ``cli: False`` has no flag (environment only)."""
    from service.settings import Settings

    params = []
    for name, info in Settings.model_fields.items():
        if (info.json_schema_extra or {}).get("cli", True) is False:
            continue
        args = [a for a in typing.get_args(info.annotation) if a is not type(None)] or [info.annotation]
        kind = args[0] if len(args) == 1 else str
        kind = str if typing.get_origin(kind) is typing.Literal else kind
        decls = [f"--{name.replace('_', '-')}"] if kind is bool else []
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=kind | None,
                default=typer.Option(None, *decls, help=setting_help(name)),
            )
        )
    log_level = typer.Option("info", help="uvicorn log level.")
    params.append(inspect.Parameter("log_level", inspect.Parameter.KEYWORD_ONLY, annotation=str, default=log_level))
    return params


def setting_help(name: str) -> str:
    """A ``Settings`` field's flag help: its description, its environment variable and its default."""
    from service.settings import Settings

    info = Settings.model_fields[name]
    choices = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else ()
    default = "" if info.default in (None, False) else f", default {info.default}"
    alternatives = f" ({' | '.join(choices)})" if choices else ""
    return f"{info.description}{alternatives} (env {Settings.model_config['env_prefix']}{name.upper()}{default})"


def serve(log_level: str = "info", **given_options: Any) -> None:
    """Serve the search API and web page (GET / ; the API's schema at GET /openapi.json)."""
    given = {k: v for k, v in given_options.items() if v is not None}  # the flags set: settings
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


serve.__signature__ = inspect.Signature(serve_options(), return_annotation=None)  # what typer reads
serve.__annotations__ = {p.name: p.annotation for p in serve.__signature__.parameters.values()}
app.command("serve")(serve)


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
MULTI_VALUE_FLAGS = ("--t", "--losses", "--noise", "--clean-losses", "--k", "--embeddings")


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


TORCH_MODULES = ("torch", "torchvision", "decord")  # what the `api` extra leaves out (pyproject.toml)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 1."""
    try:
        app(args=expand_multi_value_flags(sys.argv[1:]), prog_name="vidret")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        if exc.name not in TORCH_MODULES:
            raise
        print(
            f"error: this command needs {exc.name}, which this installation lacks (the torch-free API image, "
            "docker/Dockerfile.api, serves ONNX exports only): run it where the `cpu` or `gpu` extra is installed "
            "(the vidret:cpu image), see docs/export.md",
            file=sys.stderr,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
