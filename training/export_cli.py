"""``vidret export`` (training/export.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from indexing.errors import UserError

FORMATS = ("onnx",)


def export_cmd(
    checkpoint: Path = typer.Option(..., help="A vidret checkpoint (best.pt / last.pt)."),
    out: Path = typer.Option(..., help="The file to write, e.g. model.onnx."),
    format_: str = typer.Option("onnx", "--format", help="onnx."),
    opset: int = typer.Option(17, help="ONNX opset."),
) -> None:
    """Export a checkpoint's embedding network (dynamic batch; clip shape, preprocessing and checkpoint sha256 in
    the metadata; checked against torch before it is written). docs/export.md."""
    if format_ not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {format_!r}")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("vidret export needs onnx and onnxruntime: pip install -e '.[onnx]'") from None
    from training.export import export_onnx

    res = export_onnx(checkpoint, out, opset=opset)
    meta = res["metadata"]
    typer.echo(
        f"exported {meta['vidret.model']} to {out}: input (batch, 3, {meta['vidret.frames']}, {meta['vidret.size']}, "
        f"{meta['vidret.size']}), embedding {meta['vidret.embedding_dim']}; onnxruntime vs torch cosine distance "
        f"{res['parity_cosine_distance']:.1e}"
    )
