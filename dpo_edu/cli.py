"""The `dpo-edu` command.

dpo-edu verify     check every derivation step with sympy, and that each known slip fails
dpo-edu run        the full DPO run: pairs -> training -> evaluation -> report (see dpo_edu.run);
                   --pairs FILE, or --prompts FILE --reward SPEC, for your own data; --model for another model
dpo-edu frontier   DPO, ODPO, RLOO, best-of-N and Preferred-FT over seeds: the reward-KL frontier (dpo_edu.frontier)
dpo-edu diagnose   read a training log (metrics.jsonl or TRL's trainer_state.json) for known symptoms
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


def _stopped(command: str, error: BaseException, out: str) -> int:
    """One line for a run that stopped early: why, what is on disk, and the way on."""
    from .rundir import stopped_message

    if not isinstance(error, KeyboardInterrupt) and not str(error).startswith("interrupted"):
        print(f"dpo-edu {command}: {error}", file=sys.stderr)  # a non-finite loss: the message says what to change
        return 1
    head = "interrupted" if isinstance(error, KeyboardInterrupt) else str(error).split(";")[0]
    print(f"dpo-edu {command}: {head}; {stopped_message(out, command)}", file=sys.stderr)
    return 130


def run(args: argparse.Namespace) -> int:
    from .rewards import RewardError
    from .run import LOSS_SETTINGS
    from .run import run as run_pipeline
    from .rundir import stopped_message
    from .train import TrainingStopped

    if args.resume and args.overwrite:
        print("dpo-edu run: --resume continues a run and --overwrite replaces it; choose one", file=sys.stderr)
        return 2
    try:
        loss = {name: value for name in LOSS_SETTINGS if (value := getattr(args, name)) is not None}
        summary = run_pipeline(
            args.profile,
            args.out,
            model=args.model,
            pairs=args.pairs,
            prompts=args.prompts,
            reward=args.reward,
            heldout_fraction=args.heldout_fraction,
            overwrite=args.overwrite,
            resume=args.resume,
            progress=not args.quiet,
            precision=args.precision,
            loss=loss or None,
        )
    except RewardError as error:  # the run stopped midway: what it kept, and the way on once the reward works
        print(f"dpo-edu run: {error}; {stopped_message(args.out, 'run')}", file=sys.stderr)
        return 2
    except (FileExistsError, FileNotFoundError, PermissionError, ValueError) as error:
        print(f"dpo-edu run: {error}", file=sys.stderr)
        return 2
    except (TrainingStopped, KeyboardInterrupt) as error:
        return _stopped("run", error, args.out)
    return 0 if summary["steps"] > 0 else 1


def frontier(args: argparse.Namespace) -> int:
    from .frontier import frontier as sweep
    from .train import TrainingStopped

    if args.resume and args.overwrite:
        print("dpo-edu frontier: --resume continues a sweep and --overwrite replaces it; choose one", file=sys.stderr)
        return 2
    try:
        sweep(
            args.profile,
            args.out,
            methods=args.methods,
            betas=args.betas,
            eval_steps=args.eval_steps,
            dense=args.dense,
            model=args.model,
            overwrite=args.overwrite,
            resume=args.resume,
            progress=not args.quiet,
            precision=args.precision,
        )
    except (FileExistsError, FileNotFoundError, PermissionError, ValueError) as error:
        print(f"dpo-edu frontier: {error}", file=sys.stderr)
        return 2
    except (TrainingStopped, KeyboardInterrupt) as error:
        return _stopped("frontier", error, args.out)
    return 0


def diagnose(args: argparse.Namespace) -> int:
    from .diagnosis import DiagnoseError
    from .diagnosis import diagnose as read_symptoms

    try:
        result = read_symptoms(args.log)
    except DiagnoseError as error:  # the message names the file and what is wrong with it
        print(f"dpo-edu diagnose: {error}", file=sys.stderr)
        return 2
    print(result)
    return 0


def _run_options(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument(
        "--profile",
        choices=("smoke", "full"),
        default=None,
        help="sizes (default: the run's own with --resume, else $DPO_EDU_PROFILE, else full)",
    )
    parser.add_argument("--out", default=default_out, help=f"the run directory to create (default: {default_out})")
    parser.add_argument("--model", default=None, help="a saved model folder or hub id (default: SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run folder (only one a dpo-edu run made; the old run is kept until the new one has results)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out, with the options it was started with",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=None,
        help="autocast for sampling, training and evaluation (default: the run's own with --resume, else auto: "
        "bf16 on GPUs and CPUs that have it in hardware, else fp32); weights stay float32",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _fraction(text: str) -> float:
    """--heldout-fraction's value: a number at least 0 and below 1 (argparse names the flag in its error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number at least 0 and below 1, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1 (a share of the rows), got {text}")
    return value


def _betas(text: str) -> list[float]:
    """--betas' value: comma-separated positive numbers (argparse names the flag in its error)."""
    try:
        betas = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not betas or any(not beta > 0 for beta in betas):
        raise argparse.ArgumentTypeError(f"every beta must be a number above 0, got {text!r}")
    return betas


def _steps(text: str) -> list[int]:
    """--eval-steps' value: comma-separated whole numbers above 0 (argparse names the flag in its error)."""
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not steps or any(step < 1 for step in steps):
        raise argparse.ArgumentTypeError(f"every step must be a whole number above 0, got {text!r}")
    return steps


def _input_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("your own data (default: the course's movie-review openings, scored by VADER)")
    group.add_argument(
        "--pairs",
        default=None,
        metavar="FILE.jsonl",
        help="train on your preference pairs (TRL's standard or conversational format, optional chosen_score/"
        "rejected_score); nothing is sampled",
    )
    group.add_argument(
        "--prompts",
        default=None,
        metavar="FILE",
        help="your prompts: .txt (one per line), .jsonl with a 'prompt' field (a string or a list of "
        "messages), or .json (one array of such rows or of strings, or JSON Lines)",
    )
    group.add_argument(
        "--reward",
        default=None,
        metavar="SPEC",
        help="your reward, module:function or path/to/file.py:function, in TRL's convention "
        "reward(prompts, completions, **kwargs) -> list[float] (default: VADER sentiment)",
    )
    group.add_argument(
        "--heldout-fraction",
        dest="heldout_fraction",
        type=_fraction,
        default=None,
        metavar="F",
        help="share of --pairs rows (or --prompts lines) held out, whole prompts at a time, for evaluation (default 0.1)",
    )


def _loss_options(parser: argparse.ArgumentParser) -> None:
    from .losses import LOSS_TYPES

    group = parser.add_argument_group("loss (dpo_edu.losses; default: the profile's DPO)")
    group.add_argument(
        "--loss-type",
        dest="loss_type",
        choices=LOSS_TYPES,
        default=None,
        help="sigmoid (DPO), robust, ipo, hinge (RSO), simpo or orpo (these two use no reference)",
    )
    group.add_argument("--beta", type=float, default=None, help="the loss's beta (default: the profile's)")
    group.add_argument(
        "--label-smoothing",
        dest="label_smoothing",
        type=float,
        default=None,
        help="the label-noise rate eps for sigmoid (cDPO) or robust",
    )
    group.add_argument(
        "--sft-weight",
        dest="sft_weight",
        type=float,
        default=None,
        help='add this times the chosen responses\' NLL (RPO; TRL: loss_type=["sigmoid", "sft"])',
    )
    group.add_argument(
        "--simpo-gamma", dest="simpo_gamma", type=float, default=None, help="SimPO's target margin gamma"
    )
    group.add_argument(
        "--max-length",
        dest="max_length",
        type=int,
        default=None,
        help="tokens of prompt + response in training (default: the profile's, 64); raise it for your own data",
    )
    group.add_argument(
        "--max-prompt-length",
        dest="max_prompt_length",
        type=int,
        default=None,
        help="tokens a prompt keeps (its last ones; default: the profile's, 32)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dpo-edu", description="The dpo-edu course's command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("verify", help="check every derivation step with sympy, and that each known slip fails")
    run_parser = commands.add_parser("run", help="the full DPO run: pairs -> training -> evaluation -> report")
    _run_options(run_parser, "runs/dpo")
    _input_options(run_parser)
    _loss_options(run_parser)
    frontier_parser = commands.add_parser(
        "frontier", help="DPO, ODPO and the pipeline DPO replaces on one reward-KL frontier"
    )
    _run_options(frontier_parser, "runs/frontier")
    frontier_parser.add_argument(
        "--dense", action="store_true", help="sweep more betas (profile.frontier_dense_betas): for a GPU"
    )
    frontier_parser.add_argument(
        "--methods",
        default=None,
        metavar="M1,M2",
        help="comma-separated, of dpo, odpo, sft (Preferred-FT), rloo (against a reward model), "
        "rloo-gold (against VADER), bon, bon-gold (best-of-N) (default: the profile's, dpo,odpo)",
    )
    frontier_parser.add_argument(
        "--betas",
        default=None,
        type=_betas,
        metavar="B1,B2",
        help="DPO's and ODPO's betas, comma-separated (default: the profile's; notebook 10 uses 0.1)",
    )
    frontier_parser.add_argument(
        "--eval-steps",
        dest="eval_steps",
        default=None,
        type=_steps,
        metavar="S1,S2",
        help="the optimizer steps evaluated besides each run's last (default: the profile's; notebook 07 uses 4,24)",
    )
    diagnose_parser = commands.add_parser("diagnose", help="read a training log for known symptoms (dpo_edu.diagnose)")
    diagnose_parser.add_argument(
        "log", metavar="LOG", help="a dpo-edu metrics.jsonl, a TRL trainer_state.json, or a run folder with either"
    )
    args = parser.parse_args(argv)
    if args.command == "verify":
        return verify()
    if args.command == "run":
        return run(args)
    if args.command == "frontier":
        return frontier(args)
    if args.command == "diagnose":
        return diagnose(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
