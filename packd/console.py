"""The shared command-line helper: every console command runs through `run_app`, so a PackdError
becomes one line on stderr and exit code 2 (packd, packd-export, packd-bench, packd-demo)."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.text import Text

from packd.errors import EveryRankError, PackdError

INTERRUPTED = ("interrupted: packd writes each output whole or not at all, so nothing half-written was left and what "
               "was there before is unchanged (data synth keeps the categories it finished, train the last finished "
               "epoch); run the same command again")


def _fail(message: str, code: int) -> None:
    Console(stderr=True).print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    sys.exit(code)


def run_app(typer_app: typer.Typer, args: list[str] | None = None, prog_name: str | None = None) -> None:
    """Run a typer app as a console command: a PackdError or a usage error -> one line on stderr and exit
    code 2; Ctrl-C -> one line saying what was kept, exit code 130."""
    try:
        code = typer_app(args, prog_name=prog_name, standalone_mode=False)
    except EveryRankError as e:  # under torchrun: rank 0 reports it for all
        if os.environ.get("RANK", "0") != "0":
            sys.exit(2)
        _fail(str(e), 2)
    except PackdError as e:
        _fail(str(e), getattr(e, "exit_code", 2))
    except typer.TyperException as e:  # bad option values, unknown options: the parser's own message
        _fail(f"{e.format_message()} (see --help)", getattr(e, "exit_code", 2))
    except (KeyboardInterrupt, typer.Abort):
        _fail(INTERRUPTED, 130)
    if code == 130:  # typer turns Ctrl-C inside a command into a bare exit code 130; commands never return it
        _fail(INTERRUPTED, 130)
    sys.exit(code if isinstance(code, int) else 0)
