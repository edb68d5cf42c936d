"""The ground-truth reward of the full run: VADER's sentiment of a completion.

VADER (Hutto and Gilbert, 2014) scores English text with a hand-built lexicon
and rules for negation, intensifiers and punctuation; its `compound` score lies
in [-1, 1] (about +0.5 and up reads as clearly positive). It ships inside its
PyPI package, needs no download and no GPU, and it is fixed: the policy can be
measured against it but can never change it. It scores the completion only,
not the prompt, so a policy earns reward only for what it writes.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
import traceback
from pathlib import Path
from typing import Callable, Iterable, Sequence

RewardFunction = Callable[..., list[float]]  # reward(prompts, completions, **kwargs) -> list[float], as in TRL


@functools.lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_reward(text: str) -> float:
    """VADER compound score of `text`, in [-1, 1]; 0.0 for empty text."""
    if not isinstance(text, str):
        raise TypeError(f"sentiment_reward takes a str, got {type(text).__name__}")
    return float(_analyzer().polarity_scores(text)["compound"])


def sentiment_rewards(texts: Iterable[str]) -> list[float]:
    """`sentiment_reward` of each text, in order."""
    return [sentiment_reward(text) for text in texts]


# ------------------------------------------------------------ reward functions, in TRL's convention


def sentiment(prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
    """The course's reward as a TRL reward function: VADER of each completion (the prompts are not scored).

    TRL's convention (GRPOTrainer's `reward_funcs`, and `dpo-edu run --reward`):
    `reward(prompts, completions, **kwargs) -> list[float]`, one float per completion.
    A conversational completion is a list of messages; its last message's content is scored.
    """
    return sentiment_rewards(_text(completion) for completion in completions)


def _text(completion) -> str:
    return completion[-1]["content"] if isinstance(completion, list) else completion


class RewardError(ValueError):
    """The reward function failed or misbehaved while scoring; the message names it and what went wrong."""


def _import_failure(spec: str, what: str, error: BaseException) -> ValueError:
    if isinstance(error, SystemExit):
        return ValueError(
            f"--reward {spec!r}: importing {what} called sys.exit({error.code}); a reward file must only "
            f'define functions at import: put its script part under `if __name__ == "__main__":`'
        )
    return ValueError(f"--reward {spec!r}: importing {what} failed{_where(error)}: {type(error).__name__}: {error}")


def _where(error: BaseException) -> str:
    """' at FILE, line N': where in the user's code `error` was raised (its traceback's last frame)."""
    frames = traceback.extract_tb(error.__traceback__)
    return f" at {frames[-1].filename}, line {frames[-1].lineno}" if frames else ""


def load_reward(spec: str) -> Callable[..., list[float]]:
    """The function named by `spec`: "package.module:function" (importable) or "path/to/file.py:function".

    Raises ValueError in one line naming what is wrong (no ':', a file that does
    not exist, a module that does not import or exits at import, no such function, not callable).
    """
    location, _, name = spec.rpartition(":")
    if not location or not name:
        raise ValueError(f"--reward {spec!r}: expected module:function or path/to/file.py:function")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise ValueError(f"--reward {spec!r}: {path} is not a file")
        module_spec = importlib.util.spec_from_file_location(f"dpo_edu_user_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as error:
            raise _import_failure(spec, str(path), error) from None
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise ValueError(f"--reward {spec!r}: cannot import module {location!r} ({error})") from None
        except (Exception, SystemExit) as error:
            raise _import_failure(spec, f"module {location!r}", error) from None
    function = getattr(module, name, None)
    if function is None:
        raise ValueError(f"--reward {spec!r}: {location} has no {name!r}")
    if not callable(function):
        raise ValueError(f"--reward {spec!r}: {name!r} is a {type(function).__name__}, not a function")
    return function


def reward_source(spec: str) -> Path | None:
    """The Python file `load_reward(spec)` reads the function from (None for a module that is not a .py file)."""
    location = spec.rpartition(":")[0]
    if location.endswith(".py"):
        return Path(location)
    try:
        found = importlib.util.find_spec(location)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found is not None and str(found.origin).endswith(".py") else None


def describe_function(function) -> str:
    """'reward (my_reward.py, line 3)': a function's name and where it is defined, for messages."""
    name = getattr(function, "__qualname__", repr(function))
    try:
        return f"{name} ({inspect.getsourcefile(function)}, line {inspect.getsourcelines(function)[1]})"
    except (TypeError, OSError):
        return name


def checked_rewards(reward_fn: Callable[..., list[float]], prompts: Sequence, completions: Sequence) -> list[float]:
    """`reward_fn(prompts=..., completions=...)` as floats; RewardError, in one line naming the function, if it raises
    or misbehaves."""
    name = describe_function(reward_fn)
    try:
        values = reward_fn(prompts=list(prompts), completions=list(completions))
    except (Exception, SystemExit) as error:
        raise RewardError(f"reward function {name} raised {type(error).__name__}{_where(error)}: {error}") from None
    try:
        values = [float(value) for value in values]
    except (TypeError, ValueError) as error:
        raise RewardError(
            f"reward function {name} must return a list of numbers, got {type(values).__name__} ({error})"
        ) from None
    if len(values) != len(completions):
        raise RewardError(f"reward function {name} returned {len(values)} rewards for {len(completions)} completions")
    bad = [index for index, value in enumerate(values) if not math.isfinite(value)]
    if bad:
        raise RewardError(
            f"reward function {name} returned a non-finite reward ({values[bad[0]]}) for completion {bad[0]}"
        )
    return values


def rewards_of(reward_fn: RewardFunction, prompts: Sequence, texts: Sequence[str]) -> list[float]:
    """reward_fn's score of each completion text for the prompt at the same index.

    TRL's convention: a conversational prompt (a list of messages) gets its
    completion as [{"role": "assistant", "content": text}], a plain prompt as the text.
    """
    completions = [
        [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
        for prompt, text in zip(prompts, texts)
    ]
    return checked_rewards(reward_fn, prompts, completions)


def scorer(reward_fn: RewardFunction, prompts: Sequence) -> Callable[[list[str]], list[float]]:
    """texts -> rewards, one completion per prompt of `prompts` (what `evaluate_policy` calls)."""
    return lambda texts: rewards_of(reward_fn, prompts, texts)
