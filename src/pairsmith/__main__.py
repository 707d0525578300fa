"""``python -m pairsmith list``: every registered component with its taxonomy place."""

from __future__ import annotations

import argparse
import sys

from pairsmith.core.registry import list_entries


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pairsmith``."""
    parser = argparse.ArgumentParser(prog="python -m pairsmith", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list registered components, one per line")
    p.add_argument("--kind", choices=["curator", "loss", "method", "source"], default=None)
    args = parser.parse_args(argv)
    if args.command == "list":
        for e in list_entries(args.kind):
            branch, leaf = e.taxonomy
            print(f"{e.kind:8s} {e.name:55s} {branch}/{leaf} (survey {e.section})  {e.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
