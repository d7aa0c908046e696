"""One runner for every entry point: ``main(argv) -> int`` with the same exit codes everywhere.

0 done, 1 an error the user can fix (one line on stderr), 2 a bad command line, 130 interrupted.
``--debug`` shows the traceback instead of the line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import TinysenseError, UsageError


def run_cli(prog: str, parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int | None],
            argv: list[str] | None = None) -> int:
    if not any(a.dest == "debug" for a in parser._actions):
        parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)  # argparse itself exits 2 on a bad command line
    try:
        return body(args) or 0
    except (TinysenseError, OSError) as e:  # OSError: a full disk, a permission, a vanished folder
        if args.debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
