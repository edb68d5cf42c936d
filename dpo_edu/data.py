"""From (prompt, chosen, rejected) text to the tensors a DPO step needs.

A (prompt, response) pair becomes `input_ids` and `labels`, with the prompt
masked to -100 and EOS after the response. Chosen and rejected go into one
padded batch, chosen first, so one forward pass serves both.

Token boundary rule. Tokenising the prompt and the response apart can give
other tokens than tokenising them together (BPE merges across the seam: with SmolLM2's tokenizer
the prompt's last token "\\n" becomes "\\n\\n" when the response starts with
"\\n\\n", so the prompt's ids are no longer a prefix). So the pair is
tokenised *together*, and the prompt's own ids must be an exact prefix of the
result; otherwise a ValueError says where. When the prompt as the model sees it
ends in whitespace (the chat template with the generation prompt ends in a
newline), the response's leading whitespace is dropped: after that the seam is
clean (tested on the real tokenizer). A plain-text prompt that ends in a word
("..., because") keeps the response's leading space: " I cried" is how the
model itself continues it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from .utils import staged

IGNORE_INDEX = -100


class TokenSeamError(ValueError):
    """The prompt's tokens change when the response follows it (see the module docstring)."""


class NoRoomForResponse(ValueError):
    """After truncation the prompt leaves no token of `max_length` for the response."""


def format_prompt(tokenizer, prompt: str, *, use_chat_template: bool | None = None) -> str:
    """The prompt as the model sees it: chat template with the generation prompt, if the tokenizer has one."""
    if use_chat_template is None:
        use_chat_template = getattr(tokenizer, "chat_template", None) is not None
    if not use_chat_template:
        return prompt
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_pair(
    tokenizer,
    prompt: str,
    response: str,
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    use_chat_template: bool | None = None,
) -> dict[str, list[int]]:
    """input_ids = prompt ids + response ids + [EOS]; labels = the same with the prompt set to -100.

    Truncation: first the prompt keeps its last `max_prompt_length` tokens (the
    end of a prompt is what the response answers), then the response (with its
    EOS) is cut so the whole fits in `max_length`. Raises ValueError if no
    response token would remain.
    Returns {"input_ids": [...], "labels": [...], "prompt_length": int, "prompt_truncated": bool}.
    Raises TokenSeamError or NoRoomForResponse (both ValueErrors) for a pair that cannot be used.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token")
    chat = use_chat_template if use_chat_template is not None else getattr(tokenizer, "chat_template", None) is not None
    prompt_text = format_prompt(tokenizer, prompt, use_chat_template=chat)
    if prompt_text[-1:].isspace():
        response = response.lstrip()  # e.g. the chat template's final "\n": see the module docstring
    prompt_ids = _encode(tokenizer, prompt_text)
    joint_ids = _encode(tokenizer, prompt_text + response)
    if joint_ids[: len(prompt_ids)] != prompt_ids:
        raise TokenSeamError(
            f"the prompt's tokens change when the response follows it (they merge across the seam at "
            f"{prompt_text[-12:]!r} + {response[:12]!r}); end the prompt, or start the response, differently"
        )
    response_ids = joint_ids[len(prompt_ids) :] + [tokenizer.eos_token_id]

    prompt_truncated = max_prompt_length is not None and len(prompt_ids) > max_prompt_length
    if prompt_truncated:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length :]
    if max_length is not None:
        room = max_length - len(prompt_ids)
        if room < 1:
            raise NoRoomForResponse(
                f"max_length={max_length} leaves no room for a response after a {len(prompt_ids)}-token prompt; "
                f"raise max_length or set max_prompt_length below it"
            )
        response_ids = response_ids[:room]
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
        "prompt_length": len(prompt_ids),
        "prompt_truncated": prompt_truncated,
    }


def tokenize_preference(tokenizer, example: dict[str, Any], **kwargs) -> dict[str, dict[str, list[int]]]:
    """Tokenise {"prompt", "chosen", "rejected"} (TRL's field names) into two pairs sharing the prompt."""
    return {
        "chosen": tokenize_pair(tokenizer, example["prompt"], example["chosen"], **kwargs),
        "rejected": tokenize_pair(tokenizer, example["prompt"], example["rejected"], **kwargs),
    }


def collate_preferences(features: list[dict[str, dict[str, list[int]]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad B tokenised preferences into one batch of 2B rows: chosen rows 0..B-1, rejected rows B..2B-1.

    Returns input_ids (2B, T) long, attention_mask (2B, T) long, labels (2B, T)
    long with -100 on prompt and padding. Padding is on the right, so position
    ids need no care in a causal LM.
    """
    if not features:
        raise ValueError("cannot collate an empty batch")
    rows = [feature["chosen"] for feature in features] + [feature["rejected"] for feature in features]
    width = max(len(row["input_ids"]) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        length = len(row["input_ids"])
        input_ids[index, :length] = torch.tensor(row["input_ids"])
        labels[index, :length] = torch.tensor(row["labels"])
        attention_mask[index, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def split_chosen_rejected(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo the collation order: (2B, ...) -> chosen (B, ...), rejected (B, ...)."""
    if values.shape[0] % 2:
        raise ValueError(f"expected an even number of rows (chosen then rejected), got {values.shape[0]}")
    half = values.shape[0] // 2
    return values[:half], values[half:]


# ------------------------------------------------------------ reading a user's preference file

PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
ROLES = ("system", "user", "assistant", "tool")
MAX_LINE_BYTES = 1_000_000
SHOWN_LINES = 5  # line numbers listed per kind of skipped row
ONE_OBJECT_PER_LINE = (
    "; the file looks like one JSON array, but a pairs file is JSON Lines: one "
    '{"prompt", "chosen", "rejected"} object per line '
    "(convert it with: jq -c '.[]' FILE.json > FILE.jsonl)"
)


class PreferenceFileError(ValueError):
    """A preference file that cannot be read as it is; the message names the file, the line and the field."""


def _fail(path, number: int, field: str | None, message: str) -> PreferenceFileError:
    where = f"{path}, line {number}" + (f", field {field!r}" if field else "")
    return PreferenceFileError(f"{where}: {message}")


def _score(path, number: int, row: dict, field: str, required: bool) -> float | None:
    if field not in row:
        if required:
            raise _fail(path, number, field, "missing; ODPO needs chosen_score and rejected_score on every row")
        return None
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, number, field, f"expected a number, got {type(value).__name__} {value!r:.40}")
    if not math.isfinite(value):
        raise _fail(path, number, field, f"expected a finite number, got {value}")
    return float(value)


def load_preferences(
    path: str | os.PathLike, *, require_scores: bool = False, max_line_bytes: int = MAX_LINE_BYTES, log=print
) -> list[dict[str, Any]]:
    """Read a JSONL file of preference pairs in TRL's format: {"prompt", "chosen", "rejected"}, optionally
    "chosen_score" and "rejected_score" (numbers; ODPO needs them: `require_scores=True`).

    Standard rows hold strings. Conversational rows hold lists of messages
    ({"role", "content"}): the prompt's conversation so far (ending with a user
    turn) and the chosen and rejected replies (assistant turns), as in
    `{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}], ...}`.
    A file may mix the two; `as_standard` turns a conversational row into text with the chat template.

    Raises PreferenceFileError (a ValueError) naming the file, line and field for
    anything that is not what it claims to be: bytes that are not UTF-8, invalid
    JSON, a line that is not an object, a missing or non-string text field, a
    score that is not a finite number, a chosen score below the rejected one, a
    line longer than `max_line_bytes`, or a file with no usable pair.

    A folder is a PreferenceFileError too; a missing file, a FileNotFoundError naming it.

    Skips, counts and reports in one line (via `log`) the rows that are
    well-formed but teach nothing: blank lines, an empty (all-whitespace) prompt
    or response, chosen identical to rejected, and tied scores, with the first
    line numbers of each kind: "pairs.jsonl: skipped 3 of 1,200 rows: 2 identical
    pair (lines 4, 17), 1 empty response (line 9); 1 blank line (line 30)".
    Extra fields are kept and ignored. A byte-order mark and CRLF line ends are accepted.
    Returns the kept rows, each a dict with the three texts (and the scores when present).
    """
    numbered = numbered_preferences(path, require_scores=require_scores, max_line_bytes=max_line_bytes, log=log)
    return [row for _, row in numbered]


def numbered_preferences(
    path: str | os.PathLike, *, require_scores: bool = False, max_line_bytes: int = MAX_LINE_BYTES, log=print
) -> list[tuple[int, dict[str, Any]]]:
    """`load_preferences`, each kept row with its line number in the file: [(line, row), ...]."""
    path = Path(path)
    skipped: dict[str, list[int]] = {}  # reason: line numbers
    rows: list[tuple[int, dict[str, Any]]] = []
    total = 0
    with _open(path) as file:
        for number, raw in enumerate(file, start=1):
            if len(raw) > max_line_bytes:
                raise _fail(
                    path,
                    number,
                    None,
                    f"the line is {len(raw):,} bytes, over the limit of {max_line_bytes:,} (max_line_bytes)",
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise _fail(
                    path,
                    number,
                    None,
                    f"not UTF-8 (byte {error.start}: {raw[error.start : error.start + 1]!r}); save the file as UTF-8",
                ) from None
            if number == 1:
                text = text.removeprefix("\ufeff")  # a byte-order mark, as some editors write
            if not text.strip():
                skipped.setdefault("blank line", []).append(number)
                continue
            total += 1
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                hint = ONE_OBJECT_PER_LINE if number == 1 and text.lstrip().startswith("[") else ""
                raise _fail(path, number, None, f"not valid JSON ({error.msg} at column {error.colno}){hint}") from None
            if not isinstance(row, dict):
                hint = ONE_OBJECT_PER_LINE if isinstance(row, list) else ""
                raise _fail(
                    path,
                    number,
                    None,
                    f"expected a JSON object with {', '.join(PREFERENCE_FIELDS)}, got {type(row).__name__}{hint}",
                )
            for field in PREFERENCE_FIELDS:
                if field not in row:
                    raise _fail(path, number, field, f"missing (a row needs {', '.join(PREFERENCE_FIELDS)})")
            conversational = isinstance(row["prompt"], list)
            for field in PREFERENCE_FIELDS:
                _check_text(path, number, field, row[field], conversational)
            chosen_score = _score(path, number, row, "chosen_score", require_scores)
            rejected_score = _score(path, number, row, "rejected_score", require_scores)
            if (chosen_score is None) != (rejected_score is None):
                missing = "rejected_score" if rejected_score is None else "chosen_score"
                raise _fail(path, number, missing, "missing while the other score is given")
            if chosen_score is not None and chosen_score < rejected_score:
                raise _fail(
                    path,
                    number,
                    "chosen_score",
                    f"{chosen_score} is below rejected_score {rejected_score}: chosen and rejected are swapped?",
                )
            reason = (
                "empty prompt"
                if not _content(row["prompt"]).strip()
                else "empty response"
                if not _content(row["chosen"]).strip() or not _content(row["rejected"]).strip()
                else "identical pair"
                if row["chosen"] == row["rejected"]
                else "tied scores"
                if chosen_score is not None and chosen_score == rejected_score
                else None
            )
            if reason:
                skipped.setdefault(reason, []).append(number)
                continue
            kept = {field: row[field] for field in PREFERENCE_FIELDS}
            if chosen_score is not None:
                kept.update(chosen_score=chosen_score, rejected_score=rejected_score)
            rows.append((number, kept))
    if not rows:
        raise PreferenceFileError(f"{path}: no usable preference pair ({_describe(skipped, total)})")
    if skipped and log is not None:
        log(f"{path.name}: {_describe(skipped, total)}")
    return rows


def _check_text(path, number: int, field: str, value: Any, conversational: bool) -> None:
    """A string (standard row) or a list of {"role", "content"} messages (conversational row; the prompt decides)."""
    if not conversational:
        if not isinstance(value, str):
            kind = "a list of messages, while 'prompt' is a string" if isinstance(value, list) else type(value).__name__
            raise _fail(path, number, field, f"expected a string, got {kind}")
        return
    if not isinstance(value, list) or not value:
        raise _fail(
            path,
            number,
            field,
            'expected a non-empty list of {"role", "content"} messages, as \'prompt\' is one '
            f"(a conversational row), got {type(value).__name__}",
        )
    for index, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("content"), str)
            or message.get("role") not in ROLES
        ):
            raise _fail(
                path,
                number,
                field,
                f'message {index} must be {{"role": one of {", ".join(ROLES)}, "content": a string}}, '
                f"got {json.dumps(message)[:80]}",
            )
    if field == "prompt" and value[-1]["role"] == "assistant":
        raise _fail(path, number, field, "the prompt's last message is the assistant's; end it with the user's turn")
    if field != "prompt" and any(message["role"] != "assistant" for message in value):
        raise _fail(path, number, field, "a reply holds only assistant messages; put earlier turns in 'prompt'")


def _content(value: str | list[dict]) -> str:
    return value if isinstance(value, str) else "".join(message["content"] for message in value)


def is_conversational(row: dict[str, Any]) -> bool:
    """Whether a preference row (or a prompt row) holds messages rather than strings (TRL's test)."""
    return isinstance(row.get("prompt"), list)


def prompt_text(tokenizer, prompt: str | list[dict]) -> str:
    """The text a model continues: a string as it is; a conversation through the chat template, with the generation prompt."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("a conversational prompt needs a tokenizer with a chat template; this one has none")
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def as_standard(tokenizer, row: dict[str, Any]) -> dict[str, Any]:
    """A conversational preference row as strings, the way TRL's `apply_chat_template` renders it; a standard row unchanged.

    prompt = the conversation with the generation prompt; chosen/rejected = what
    the chat template adds after it for each reply. The reply's closing EOS
    ("<|im_end|>" and the newline after it, for SmolLM2) is left out, because
    `tokenize_pair` appends EOS itself. Scores and other fields are kept.
    """
    if not is_conversational(row):
        return row
    prompt = prompt_text(tokenizer, row["prompt"])
    converted = dict(row, prompt=prompt)
    for field in ("chosen", "rejected"):
        full = tokenizer.apply_chat_template(row["prompt"] + row[field], tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(
                f"the chat template renders the prompt differently once the {field} reply follows it; "
                f"this tokenizer's template cannot be split into prompt and reply"
            )
        reply = full[len(prompt) :].rstrip()
        eos = tokenizer.eos_token or ""
        converted[field] = reply[: -len(eos)] if eos and reply.endswith(eos) else reply
    return converted


def _open(path: Path):
    """`path` opened for reading bytes; a folder or a missing file fails in one line naming it."""
    if path.is_dir():
        raise PreferenceFileError(f"{path}: is a folder; pass a .jsonl file, not a folder")
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; pass the path of a .jsonl file of preference pairs") from None


def _describe(skipped: dict[str, list[int]], total: int) -> str:
    """'skipped 3 of 1,200 rows: 2 identical pair (lines 4, 17), 1 empty response (line 9); 1 blank line (line 30)'."""
    blank = skipped.get("blank line", [])
    reasons = {reason: lines for reason, lines in skipped.items() if reason != "blank line"}
    text = f"skipped {sum(map(len, reasons.values())):,} of {total:,} rows"
    if reasons:
        text += ": " + ", ".join(_where(reason, lines) for reason, lines in reasons.items())
    if blank:
        text += "; " + _where("blank lines" if len(blank) > 1 else "blank line", blank)
    return text


def _where(reason: str, lines: list[int]) -> str:
    """'2 identical pair (lines 4, 17)': the count, then the first SHOWN_LINES line numbers and '…' for more."""
    shown = ", ".join(str(number) for number in lines[:SHOWN_LINES]) + (", …" if len(lines) > SHOWN_LINES else "")
    return f"{len(lines):,} {reason} ({'lines' if len(lines) > 1 else 'line'} {shown})"


def write_jsonl(rows: Sequence[dict], path: str | Path) -> Path:
    """Write one JSON object per line (UTF-8, "\\n"), atomically (`dpo_edu.utils.staged`: a temporary file, then a rename)."""
    path = Path(path)
    with staged(path) as staging, staging.open("w", encoding="utf-8", newline="\n") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
