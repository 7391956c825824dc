"""The shared command-line helper: every console command runs through `run_app`, so a PackdError
becomes one line on stderr and exit code 2 (packd, packd-export, packd-bench, packd-demo)."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.text import Text

from packd.errors import PackdError


def run_app(typer_app: typer.Typer, args: list[str] | None = None, prog_name: str | None = None) -> None:
    """Run a typer app as a console command; PackdError -> one line on stderr, exit code 2."""
    try:
        typer_app(args, prog_name=prog_name)
    except PackdError as e:
        Console(stderr=True).print(Text.assemble(("error: ", "bold red"), str(e)), highlight=False, soft_wrap=True)
        sys.exit(2)
