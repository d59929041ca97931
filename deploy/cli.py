"""`tritonstack` — one console script; each package contributes its commands."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="tritonstack",
    help="Export PyTorch models to a Triton repository and serve them behind an OpenAI-compatible gateway.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
