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
from typing import Iterable


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
