"""
The C{golb} command: C{golb check PATH} validates a configuration file
without starting anything.
"""

import argparse
import sys
from typing import List, Optional

from golb import __version__

__all__ = ["main"]


def check(path: str, out=None, err=None) -> int:
    """
    Validate the configuration at C{path}: print C{OK} and a one-line summary,
    or every problem with its line; return the exit status (0 or 1).
    """
    from golb.config import ConfigError, loadConfig, summary

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        config = loadConfig(path)
    except ConfigError as e:
        for problem in e.problems:
            err.write(f"{problem}\n")
        err.write(f"{len(e.problems)} problem(s) in {path}\n")
        return 1
    except OSError as e:
        err.write(f"golb: cannot read {path}: {e.strerror or e}\n")
        return 1
    out.write(f"OK: {path}: {summary(config)}\n")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """
    Entry point of the C{golb} console script and of C{python -m golb}.
    """
    parser = argparse.ArgumentParser(
        prog="golb",
        description="golb, an HTTP/S load balancer. Run it with: twistd golb --config PATH",
    )
    parser.add_argument("--version", action="version", version=f"golb {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    checkParser = commands.add_parser("check", help="validate a configuration file")
    checkParser.add_argument("path", help="the YAML configuration file")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.path)
    parser.print_help(sys.stderr)
    return 2
