"""The `dpo-edu` command.

    dpo-edu verify     check every derivation step with sympy, and that each known slip fails
"""
from __future__ import annotations

import argparse
import sys


def verify() -> int:
    from . import derivations

    steps = derivations.verify_all()
    slips = derivations.known_slips()
    print("derivation steps (each must be True):")
    for name, holds in steps.items():
        print(f"  {'ok  ' if holds else 'FAIL'} {name}: {holds}")
    print("known slips (each must be False):")
    for name, holds in slips.items():
        print(f"  {'ok  ' if not holds else 'FAIL'} {name}: {holds}")
    good = all(steps.values()) and not any(slips.values())
    print("all checks passed" if good else "SOME CHECKS FAILED")
    return 0 if good else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dpo-edu", description="The dpo-edu course's command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("verify", help="check every derivation step with sympy, and that each known slip fails")
    args = parser.parse_args(argv)
    if args.command == "verify":
        return verify()
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
