"""One-line usage errors for the export programs (``selfsup-export``, ``selfsup-serve``).

A mistake the user can fix prints ``<program>: error: <message>`` on stderr and exits with
status 2, for bad flags (absl's parser) as for checks in ``main``; no traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import flags

USAGE_ERROR = 2


def usage_error(program: str, message: str) -> int:
    """Prints the one-line error of ``program`` and returns the exit status for it."""
    print(f"{program}: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def one_line_flag_parser(program: str) -> Callable[[list[str]], list[str]]:
    """An ``app.run`` flags parser: absl parsing, a bad flag is one line and exit status 2."""

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            sys.exit(usage_error(program, str(error)))

    return parse
