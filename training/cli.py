"""``vidret data|train|embed|plot|bench|audit`` sub-commands."""

from __future__ import annotations

from pathlib import Path

import typer

from indexing.errors import UserError

plot_app = typer.Typer(help="Figures.", no_args_is_help=True)


@plot_app.command("weights")
def plot_weights_cmd(
    out: Path = typer.Argument(..., help="PNG file to write."),
    t: list[float] = typer.Option([1.0, 2.0, 4.0, 8.0, 16.0], "--t", help="IMAE temperatures (repeat the flag)."),
) -> None:
    """Sample weight vs p_y for CCE, MAE and IMAE at several T (the IMAE paper's Figure 1)."""
    if any(v < 0 for v in t):
        raise UserError(f"--t values must be >= 0, got {t}")
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"{out}: the output must end in .png, .pdf or .svg")
    from training.plots import plot_weights

    path = plot_weights(out, list(t))
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Mount the training sub-commands on the root app."""
    from training.data_cli import data_app

    app.add_typer(data_app, name="data")
    app.add_typer(plot_app, name="plot")
