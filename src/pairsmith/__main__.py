"""``python -m pairsmith list``: every registered component with its taxonomy place."""

from __future__ import annotations

import argparse
import sys

from pairsmith.core.registry import SURVEY_SECTIONS, iter_taxonomy, list_entries


def feature_table() -> str:
    """Markdown table: each taxonomy leaf with its registered components (README)."""
    lines = ["| survey section | branch / leaf | components |", "|---|---|---|"]
    for (branch, leaf), entries in iter_taxonomy():
        names = ", ".join(f"`{e.name}` ({e.kind})" for e in entries) or "(none yet)"
        lines.append(f"| {SURVEY_SECTIONS[(branch, leaf)]} | {branch} / {leaf} | {names} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pairsmith``."""
    parser = argparse.ArgumentParser(prog="python -m pairsmith", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list registered components, one per line")
    p.add_argument("--kind", choices=["curator", "loss", "method", "source"], default=None)
    p.add_argument(
        "--markdown",
        action="store_true",
        help="print the README's feature table: every leaf of the survey's Figure 1 with the "
        "components registered under it",
    )
    args = parser.parse_args(argv)
    if args.command == "list" and args.markdown:
        print(feature_table())
    elif args.command == "list":
        for e in list_entries(args.kind):
            branch, leaf = e.taxonomy
            print(f"{e.kind:8s} {e.name:55s} {branch}/{leaf} (survey {e.section})  {e.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
