"""``vidret index build`` and ``vidret evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from indexing.errors import UserError

index_app = typer.Typer(help="FAISS indexes of embeddings.", no_args_is_help=True)


@index_app.command("build")
def build_cmd(
    embeddings: list[Path] = typer.Option(
        ...,
        help="Embeddings: .npz files (vidret embed), shard lists (shards.json) or shard folders (vidret embed "
        "--shards); several are indexed in the order given (repeat the flag or list them after it).",
    ),
    out: Path | None = typer.Option(None, help="Index folder to create (--backend faiss)."),
    type_: str = typer.Option("auto", "--type", help="auto | flat | ivf | ivfpq | hnsw."),
    metric: str = typer.Option("cosine", help="cosine | l2."),
    gpu: bool | None = typer.Option(None, "--gpu/--no-gpu", help="Build on the GPU (default: when available)."),
    memory_budget_mb: float = typer.Option(4096, help="The memory budget in MiB (--max-memory takes sizes)."),
    max_memory: str | None = typer.Option(
        None,
        "--max-memory",
        help="Memory budget of the index and its build, e.g. 512MB or 4GB: --type auto picks what fits, and the "
        "build reads, trains and adds within it (docs/formats.md).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index folder."),
    nlist: int | None = typer.Option(
        None, help="IVF lists (--type ivf / ivfpq; default about 4 sqrt(N), lowered to fit --max-memory)."
    ),
    train_rows: int | None = typer.Option(
        None, help="Rows of the seeded sample that trains an IVF index (default: up to 256 a list, within the budget)."
    ),
    backend: str = typer.Option("faiss", help="faiss (an index folder, --out) | milvus (a Milvus collection)."),
    milvus_uri: str | None = typer.Option(None, help="Milvus URI, or a local .db file for milvus-lite."),
    milvus_collection: str = typer.Option("vidret", help="The Milvus collection to create (or replace: --overwrite)."),
) -> None:
    """Build an index folder: index.faiss, vectors, SQLite metadata, index.json (or, with --backend milvus, a
    Milvus collection of the vectors and metadata; VIDRET_MILVUS_TOKEN gives Milvus credentials)."""
    import os

    from indexing.backend import build_index, check_backend
    from indexing.embeddings import expand_sources
    from indexing.planning import parse_memory

    if max_memory is not None:
        memory_budget_mb = parse_memory(max_memory)
    check_backend(backend)
    ix = build_index(
        backend,
        embeddings,
        out,
        type=type_,
        metric=metric,
        memory_budget_mb=memory_budget_mb,
        overwrite=overwrite,
        gpu=gpu,
        milvus_uri=milvus_uri,
        milvus_collection=milvus_collection,
        milvus_token=os.environ.get("VIDRET_MILVUS_TOKEN"),
        nlist=nlist,
        train_rows=train_rows,
    )
    params = ", ".join(f"{k}={v}" for k, v in ix.info.get("params", {}).items())
    if backend == "milvus":
        typer.echo(
            f"built Milvus {ix.info['index_type']} collection {milvus_collection!r} ({params or 'exact'}) of "
            f"{ix.count} vectors, dim {ix.dim}, {ix.metric} -> {milvus_uri}"
        )
    else:
        n_files = len(expand_sources(embeddings))
        files = f" from {n_files} files" if n_files > 1 else ""
        typer.echo(
            f"built {ix.type} index ({params or 'exact'}) of {ix.count} vectors{files}, dim {ix.dim}, {ix.metric} "
            f"-> {out}"
        )
    ix.close()


def print_scores(scores, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("mAP", f"{scores.mAP * 100:.2f}%")
    for k, v in sorted(scores.cmc.items()):
        table.add_row(f"CMC@{k}", f"{v * 100:.2f}%")
    table.add_row("queries evaluated", str(scores.num_queries))
    table.add_row("queries skipped (no relevant item)", str(scores.skipped))
    Console().print(table)


def evaluate_cmd(
    queries: Path = typer.Option(..., help="Query embeddings .npz."),
    index: Path | None = typer.Option(None, help="Index folder: the gallery is what it holds."),
    gallery: Path | None = typer.Option(None, help="Gallery embeddings .npz (instead of --index)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the scores as JSON."),
    depth: int | None = typer.Option(None, help="Approximate: rank only the top K of the index's search."),
    metric: str | None = typer.Option(None, help="cosine | l2 (default: the index's metric, else cosine)."),
    ks: list[int] = typer.Option([1, 5, 10], "--k", help="CMC ranks (repeat the flag)."),
    rerank: bool = typer.Option(
        False, "--rerank", help="k-reciprocal re-ranking (Zhong et al. 2017) before scoring (docs/evaluation.md)."
    ),
    k1: int = typer.Option(20, "--k1", help="--rerank: neighbourhood size k1."),
    k2: int = typer.Option(6, "--k2", help="--rerank: query expansion over the k2 nearest."),
    lambda_value: float = typer.Option(0.3, "--lambda", help="--rerank: weight of the original distance."),
) -> None:
    """mAP and CMC with the re-ID protocol (self and same-label-same-camera gallery items removed)."""
    from indexing.embeddings import load_embeddings
    from indexing.metrics import evaluate_ranked_lists, evaluate_retrieval

    if (index is None) == (gallery is None):
        raise UserError("give exactly one of --index and --gallery")
    if depth is not None and (index is None or depth < 1):
        raise UserError("--depth K needs --index and K >= 1")
    if rerank and depth is not None:
        raise UserError("--rerank ranks the whole gallery: it does not take --depth")
    rr = _rerank_params(rerank, k1, k2, lambda_value)
    q = load_embeddings(queries)
    if index is not None:
        from indexing.backend import open_index

        ix = open_index("faiss", index, gpu=None)
        metas, vecs = ix.snapshot()
        g_ids, g_labels, g_cams = [m.id for m in metas], [m.label for m in metas], [m.camera for m in metas]
        metric = metric or ix.metric
        if rr is not None:
            from indexing.rerank import index_searcher

            res = _reranked(q, vecs, g_ids, g_labels, g_cams, ks, metric, rr, index_searcher(ix, g_ids))
        elif depth is not None:
            hits = ix.search(q.embeddings, depth)
            res = evaluate_ranked_lists(
                [[h.id for h in hs] for hs in hits], q.ids, q.labels, q.cameras, g_ids, g_labels, g_cams, ks=ks
            )
        ix.close()
    else:
        g = load_embeddings(gallery)
        vecs, g_ids, g_labels, g_cams = g.embeddings, g.ids, g.labels, g.cameras
    if vecs.shape[1] != q.dim:
        raise UserError(f"queries have dimension {q.dim}, the gallery {vecs.shape[1]}")
    if rr is not None and index is None:
        res = _reranked(q, vecs, g_ids, g_labels, g_cams, ks, metric or "cosine", rr, None)
    elif depth is None and rr is None:
        res = evaluate_retrieval(
            q.embeddings, q.ids, q.labels, q.cameras, vecs, g_ids, g_labels, g_cams, ks=ks, metric=metric or "cosine"
        )
    mode = f" (top-{depth})" if depth else " (exact)"
    if rr is not None:
        mode = f" (re-ranked: k1 {rr.k1}, k2 {rr.k2}, lambda {rr.lambda_value})"
    print_scores(res, f"retrieval: {len(q)} queries vs {len(g_ids)} gallery videos" + mode)
    if json_out is not None:
        from indexing.atomic import atomic_write_text

        body = res.to_json() | ({"rerank": rr.__dict__} if rr is not None else {})
        atomic_write_text(json_out, json.dumps(body, indent=2) + "\n")


def _rerank_params(rerank: bool, k1: int, k2: int, lambda_value: float):
    if not rerank:
        return None
    from indexing.rerank import RerankParams

    return RerankParams(k1, k2, lambda_value).check()


def _reranked(q, vecs, g_ids, g_labels, g_cams, ks, metric, params, search):
    """``evaluate --rerank``: the scores after re-ranking; says how big its neighbourhoods and memory were."""
    from indexing.rerank import rerank_evaluate

    if vecs.shape[1] != q.dim:
        raise UserError(f"queries have dimension {q.dim}, the gallery {vecs.shape[1]}")
    res, stats = rerank_evaluate(
        q.embeddings, q.ids, q.labels, q.cameras, vecs, g_ids, g_labels, g_cams, ks=ks, metric=metric,
        params=params, gallery_search=search,
    )  # fmt: skip
    typer.echo(stats.describe())
    return res


def register(app: typer.Typer) -> None:
    """Mount the indexing sub-commands on the root app."""
    app.add_typer(index_app, name="index")
    app.command("evaluate")(evaluate_cmd)
