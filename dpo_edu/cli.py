"""The `dpo-edu` command.

    dpo-edu verify     check every derivation step with sympy, and that each known slip fails
    dpo-edu run        the full DPO run: pairs -> training -> evaluation -> report (see dpo_edu.run)
    dpo-edu frontier   DPO and ODPO over a beta sweep and seeds: the reward-KL frontier (see dpo_edu.frontier)
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


def run(args: argparse.Namespace) -> int:
    from .run import run as run_pipeline
    from .train import TrainingStopped

    if args.resume and args.overwrite:
        print("dpo-edu run: --resume continues a run and --overwrite replaces it; choose one", file=sys.stderr)
        return 2
    try:
        summary = run_pipeline(args.profile, args.out, model=args.model, overwrite=args.overwrite, resume=args.resume,
                               progress=not args.quiet)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"dpo-edu run: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as error:
        print(f"dpo-edu run: {error}", file=sys.stderr)
        return 130 if str(error).startswith("interrupted") else 1
    except KeyboardInterrupt:
        print(f"dpo-edu run: interrupted before training started; {args.out} holds what was finished "
              f"(start again with --overwrite)", file=sys.stderr)
        return 130
    return 0 if summary["steps"] > 0 else 1


def frontier(args: argparse.Namespace) -> int:
    from .frontier import frontier as sweep

    try:
        sweep(args.profile, args.out, dense=args.dense, model=args.model, overwrite=args.overwrite, progress=not args.quiet)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"dpo-edu frontier: {error}", file=sys.stderr)
        return 2
    return 0


def _run_options(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--profile", choices=("smoke", "full"), default=None, help="sizes (default: $DPO_EDU_PROFILE, else full)")
    parser.add_argument("--out", default=default_out, help=f"the run directory to create (default: {default_out})")
    parser.add_argument("--model", default=None, help="a saved model folder or hub id (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty run directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dpo-edu", description="The dpo-edu course's command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("verify", help="check every derivation step with sympy, and that each known slip fails")
    run_parser = commands.add_parser("run", help="the full DPO run: pairs -> training -> evaluation -> report")
    _run_options(run_parser, "runs/dpo")
    run_parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out from its last checkpoint")
    frontier_parser = commands.add_parser("frontier", help="DPO and ODPO over a beta sweep and seeds: the reward-KL frontier")
    _run_options(frontier_parser, "runs/frontier")
    frontier_parser.add_argument("--dense", action="store_true", help="sweep more betas (profile.frontier_dense_betas): for a GPU")
    args = parser.parse_args(argv)
    if args.command == "verify":
        return verify()
    if args.command == "run":
        return run(args)
    if args.command == "frontier":
        return frontier(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
