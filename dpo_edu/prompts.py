"""The course's movie-review openings: the prompts of the full DPO run.

Every opening fills one of the templates below with an invented film title, a
genre and (for some templates) a scene or an expectation. All the word lists
are written for this course; the titles are made up, so no real film's reviews
leak in. The templates are varied in tone on purpose (enthusiastic, hostile,
neutral, mixed, undecided) and stop mid-sentence, so the sentiment of the
continuation is left open: the reference policy's continuations land on both
sides of neutral, leaving room for DPO to push them positive.

Held-out openings use titles that never appear in training, so a policy cannot
do well on them by remembering a title. Each row is {"prompt": "...", "tone": "..."};
`tone` is the template's, for reporting only (the reward never sees it).

`data/make_prompts.py` writes these rows to data/prompts_{train,heldout}.jsonl;
`load_prompts` reads a file, or makes the same rows in memory where the repo's
data/ folder is absent (a pip install on Colab). A test keeps the two equal.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

SPLITS = ("train", "heldout")

SEED = 2024
N_TRAIN, N_HELDOUT = 640, 240

ADJECTIVES = [
    "Last",
    "Silent",
    "Broken",
    "Hollow",
    "Golden",
    "Crimson",
    "Paper",
    "Midnight",
    "Distant",
    "Burning",
    "Quiet",
    "Frozen",
    "Velvet",
    "Iron",
    "Glass",
    "Wild",
    "Lonely",
    "Electric",
    "Forgotten",
    "Bitter",
]
NOUNS = [
    "Harbor",
    "Static",
    "Moons",
    "Rivers",
    "Orchard",
    "Signal",
    "Kingdom",
    "Summer",
    "Letters",
    "Engine",
    "Garden",
    "Frontier",
    "Lanterns",
    "Tide",
    "Alibi",
    "Parade",
    "Winter",
    "Compass",
    "Choir",
    "Horizon",
]
GENRES = [
    "thriller",
    "romantic comedy",
    "animated feature",
    "war drama",
    "horror film",
    "documentary",
    "science-fiction epic",
    "musical",
    "western",
    "heist movie",
    "coming-of-age story",
    "biopic",
    "courtroom drama",
    "disaster movie",
    "family comedy",
    "spy thriller",
    "period piece",
    "superhero movie",
    "mystery",
    "sports drama",
]
SCENES = [
    "an empty train station",
    "a crowded wedding",
    "a burning farmhouse",
    "two strangers on a rooftop",
    "a child drawing on a steamed-up window",
    "a storm over the sea",
    "a courtroom at dawn",
    "a dog waiting by a door",
]
EXPECTATIONS = [
    "very little",
    "a masterpiece",
    "a fun evening",
    "a disaster",
    "another tired sequel",
    "something different",
]

TEMPLATES = {
    "positive": [
        "From its very first scene, {title} had me",
        "I did not expect a {genre} to move me this much, but {title}",
        "{title} is the rare {genre} that",
        "I have already seen {title} twice, and",
        "Bring tissues to {title}, because",
    ],
    "negative": [
        "I wanted to like {title}, a {genre} I had waited months for, but",
        "The best thing I can say about {title} is that",
        "Two hours of {title} left me",
        "Everyone told me {title} was a masterpiece. After watching it,",
        "I walked out of {title} halfway through, because",
    ],
    "neutral": [
        "{title} is a {genre} that runs just under two hours and",
        "{title} opens with a long, quiet shot of {scene}, and",
        "The new {genre} {title} follows a family over one summer, and",
        "I saw {title} on a Tuesday afternoon in a half-empty theater, and",
        "Like most {genre}s, {title} begins with {scene}; from there",
    ],
    "mixed": [
        "The trailer for {title} promised {expectation}, but",
        "{title} has a brilliant first act and",
        "As a longtime fan of the {genre}, I found {title}",
        "The acting in {title} is strong, yet",
        "I went into {title} expecting {expectation}, and",
    ],
    "undecided": [
        "Let me be honest about {title}:",
        "By the halfway mark of {title},",
        "It is hard to describe {title} without",
        "My friends and I argued about {title} all the way home;",
        "What stays with me about {title} is",
    ],
}


def article_fixed(text: str) -> str:
    """'a animated feature' -> 'an animated feature'."""
    for vowel in "aeiou":
        text = text.replace(f" a {vowel}", f" an {vowel}").replace(f"A {vowel}", f"An {vowel}")
    return text


def openings(titles: list[str], count: int, rng: random.Random) -> list[dict[str, str]]:
    """`count` distinct openings, tones in equal shares, drawn with `rng` from `titles`."""
    tones = list(TEMPLATES)
    chosen: dict[str, dict[str, str]] = {}
    for tone in itertools.cycle(tones):
        if len(chosen) >= count:
            break
        template = rng.choice(TEMPLATES[tone])
        text = template.format(
            title=rng.choice(titles),
            genre=rng.choice(GENRES),
            scene=rng.choice(SCENES),
            expectation=rng.choice(EXPECTATIONS),
        )
        text = article_fixed(text)
        chosen.setdefault(text, {"prompt": text, "tone": tone})
    return list(chosen.values())


def make_prompts() -> dict[str, list[dict[str, str]]]:
    """{"train": [...], "heldout": [...]}: the same rows every time (seeded)."""
    rng = random.Random(SEED)
    titles = [f"{adjective} {noun}" for adjective in ADJECTIVES for noun in NOUNS]
    rng.shuffle(titles)
    split = int(0.75 * len(titles))
    train_titles, heldout_titles = titles[:split], titles[split:]
    return {"train": openings(train_titles, N_TRAIN, rng), "heldout": openings(heldout_titles, N_HELDOUT, rng)}


def repo_data_dir() -> Path | None:
    """The repo's data/ folder when the package runs from a clone (editable install), else None."""
    folder = Path(__file__).resolve().parents[1] / "data"
    return folder if (folder / "make_prompts.py").is_file() else None


def load_prompts(split: str = "train", path: str | Path | None = None) -> list[str]:
    """The openings of `split` ("train" or "heldout"), or the prompts of the file `path` (see `read_prompts`)."""
    if path is None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        folder = repo_data_dir()
        if folder is None:
            return [row["prompt"] for row in make_prompts()[split]]
        path = folder / f"prompts_{split}.jsonl"
    return read_prompts(path)


def read_prompts(path: str | Path) -> list:
    """A user's prompts (`dpo-edu run --prompts`): a .txt file with one prompt per line (blank lines skipped), a
    .jsonl file whose rows have a "prompt" field: a string, or a list of {"role", "content"} messages (TRL's
    conversational format, continued through the chat template), or a .json file holding either one JSON array
    of such rows (or of plain strings) or JSON Lines. Any other suffix is read as text.

    Raises ValueError naming the file, line (or array item) and field; a missing file is one line naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{path}: no such file; pass a .txt file (one prompt per line) or a .jsonl file with a 'prompt' field"
        )
    with path.open(encoding="utf-8-sig") as file:
        try:
            lines = list(enumerate(file, start=1))
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{path}: not UTF-8 ({error.reason} at byte {error.start}); save the file as UTF-8"
            ) from None
    if path.suffix in (".json", ".jsonl"):
        prompts = [_prompt_of(path, where, row) for where, row in _json_rows(path, lines)]
    else:
        prompts = [line.rstrip("\r\n") for _, line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def _json_rows(path: Path, lines: list[tuple[int, str]]) -> list[tuple[str, object]]:
    """(where, row) of a .json file that is one array (or object), else of each non-blank line (JSON Lines)."""
    if path.suffix == ".json":
        try:
            whole = json.loads("".join(line for _, line in lines))
        except json.JSONDecodeError:
            whole = None  # more than one JSON value: JSON Lines
        if isinstance(whole, list):
            return [(f"item {index}", row) for index, row in enumerate(whole, start=1)]
        if isinstance(whole, dict):
            return [("item 1", whole)]
    rows = []
    for number, line in lines:
        if not line.strip():
            continue
        try:
            rows.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}, line {number}: not valid JSON ({error.msg} at column {error.colno}); a prompts "
                f'file in JSON holds one {{"prompt": ...}} object per line (.jsonl), or one array of '
                f"them (.json)"
            ) from None
    return rows


def _prompt_of(path: Path, where: str, row) -> str | list:
    """The prompt of one JSON row: its "prompt" field (a string or a conversation), or the row itself if a string."""
    prompt = row if isinstance(row, str) else row.get("prompt") if isinstance(row, dict) else None
    if not _usable_prompt(prompt):
        raise ValueError(
            f"{path}, {where}, field 'prompt': expected a non-empty string or a list of "
            f'{{"role", "content"}} messages ending with the user\'s, got {json.dumps(prompt)[:60]}'
        )
    return prompt


def _usable_prompt(prompt) -> bool:
    if isinstance(prompt, str):
        return bool(prompt.strip())
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str) for m in prompt
        )
        and prompt[-1]["role"] == "user"
    )
