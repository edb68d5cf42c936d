"""What every checker shares: calling the learner's function safely, the one-line verdict, comparisons."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch


class _NotAttempted(Exception):
    pass


class _Wrong(Exception):
    """A wrong answer; its message is the one-line hint the learner sees."""


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call(function: Callable, *args: Any) -> Any:
    """The learner's function on `args`; whatever goes wrong becomes a one-line _Wrong."""
    if not callable(function):
        raise _Wrong(
            f"expected a function, got {type(function).__name__}: pass the function itself, without calling it"
        )
    try:
        result = function(*args)
    except NotImplementedError as error:
        raise _NotAttempted from error
    except Exception as error:
        raise _Wrong(f"your function raised {type(error).__name__}: {_one_line(error, 160)}") from error
    if result is None:
        raise _Wrong("your function returned None - did you forget `return`?")
    return result


def _verdict(name: str, body: Callable[[], str]) -> bool | None:
    try:
        detail = body()
    except _NotAttempted:
        print(f"{name}: not attempted yet - fill in the cell above and run it again")
        return None
    except (_Wrong, AssertionError) as error:
        print(f"{name}: wrong - {_one_line(error)}")
        return False
    except Exception as error:  # an answer of a kind the check did not foresee
        print(f"{name}: wrong - your answer could not be checked ({type(error).__name__}: {_one_line(error, 160)})")
        return False
    print(f"{name}: correct - {detail}")
    return True


def _labelled_causes(causes, truth: dict, hints: dict, *, advice: str = "") -> None:
    """A diagnose exercise's answer {label: cause} against `truth` ({label: cause}); `hints` maps each allowed cause
    to what tells it apart. Raises _NotAttempted or a one-line _Wrong naming the first wrong label."""
    if causes is None or (isinstance(causes, dict) and all(value is None for value in causes.values())):
        raise _NotAttempted
    if not isinstance(causes, dict) or sorted(causes) != sorted(truth):
        raise _Wrong(f"expected a dict with the keys {sorted(truth)}")
    unknown = [label for label, cause in causes.items() if cause not in hints]
    if unknown:
        raise _Wrong(f"log {unknown[0]}: answer one of {sorted(hints)}")
    wrong = [label for label in sorted(causes) if causes[label] != truth[label]]
    if wrong:
        label = wrong[0]
        raise _Wrong(
            f"log {label} is not '{causes[label]}': {hints[causes[label]]}{advice} ({len(wrong)} of {len(truth)} wrong)"
        )


def _digits(integer: int) -> int:
    """Decimal digits of a (possibly huge) integer, without str(), which Python caps at 4300 digits."""
    return int(abs(integer).bit_length() * math.log10(2)) + 1


def _number(value: Any, what: str) -> float:
    """One real number from a float, int, numpy scalar or one-element tensor."""
    if isinstance(value, (str, complex)) or callable(value):
        raise _Wrong(f"{what}: expected a real number, got {type(value).__name__}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1e300:
        raise _Wrong(f"{what}: got an integer with about {_digits(value)} digits, far beyond any float")
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64)
    except Exception:
        raise _Wrong(f"{what}: expected one number, got {type(value).__name__}") from None
    if tensor.numel() != 1:
        raise _Wrong(f"{what}: expected one number, got {tensor.numel()} values of shape {tuple(tensor.shape)}")
    return tensor.item()


def _tensor(value: Any, expected: torch.Tensor, what: str) -> torch.Tensor:
    """The learner's result as a tensor shaped and typed like `expected`."""
    if isinstance(value, str):
        raise _Wrong(f"{what}: expected a tensor, got a str")
    try:
        tensor = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    except Exception:
        raise _Wrong(f"{what}: expected a tensor, got {type(value).__name__}") from None
    if tensor.shape != expected.shape:
        per_pair = (
            " - one value per row (per pair): do not average or sum over the batch"
            if tensor.dim() < expected.dim()
            else ""
        )
        raise _Wrong(f"{what}: shape {tuple(tensor.shape)}, expected {tuple(expected.shape)}{per_pair}")
    if tensor.is_complex():
        raise _Wrong(f"{what}: got complex numbers")
    return tensor.to(expected.dtype)


def _close(actual: Any, expected: torch.Tensor, what: str, atol: float = 1e-5, rtol: float = 0.0) -> torch.Tensor:
    """Raise _Wrong unless `actual` matches `expected` entry by entry; returns `actual` as a tensor."""
    actual = _tensor(actual, expected, what)
    broken = torch.isfinite(expected) & ~torch.isfinite(actual)
    if broken.any():
        raise _Wrong(
            f"{what}: got inf or nan where the right value is finite ({int(broken.sum())} of {expected.numel()} "
            "entries, at the extreme test inputs); is it computed stably?"
        )
    error = (actual - expected).abs() - rtol * expected.abs()
    if (error > atol).any():
        worst = (actual - expected).abs().max().item()
        raise _Wrong(
            f"{what}: off by up to {worst:.3g} ({int((error > atol).sum())} of {expected.numel()} entries wrong)"
        )
    return actual


def _matches(actual: torch.Tensor, candidate: torch.Tensor, atol: float = 1e-6) -> bool:
    return actual.shape == candidate.shape and torch.allclose(actual, candidate.to(actual.dtype), atol=atol, rtol=1e-6)


def _first_matching_slip(actual: torch.Tensor, slips: dict[str, torch.Tensor]) -> str | None:
    return next((hint for hint, value in slips.items() if _matches(actual, value)), None)


def _random_logps(seed: int, batch: int = 16) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(-20 * torch.rand(batch, generator=generator, dtype=torch.float64) for _ in range(4))


def _extreme_margin_logps() -> tuple[torch.Tensor, ...]:
    """float32 log-probs whose DPO margins at beta = 1 are +120, -120, +1000 and -1000."""
    ref_chosen = torch.full((4,), -1500.0)
    rejected = torch.full((4,), -40.0)
    policy_chosen = ref_chosen + torch.tensor([120.0, -120.0, 1000.0, -1000.0])
    return policy_chosen, rejected, ref_chosen, rejected.clone()
