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

from typing import Any

import torch

IGNORE_INDEX = -100


def format_prompt(tokenizer, prompt: str, *, use_chat_template: bool | None = None) -> str:
    """The prompt as the model sees it: chat template with the generation prompt, if the tokenizer has one."""
    if use_chat_template is None:
        use_chat_template = getattr(tokenizer, "chat_template", None) is not None
    if not use_chat_template:
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


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
    Returns {"input_ids": [...], "labels": [...], "prompt_length": int}.
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
        raise ValueError(
            f"the prompt's tokens change when the response follows it (they merge across the seam at "
            f"{prompt_text[-12:]!r} + {response[:12]!r}); end the prompt, or start the response, differently"
        )
    response_ids = joint_ids[len(prompt_ids) :] + [tokenizer.eos_token_id]

    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length :]
    if max_length is not None:
        room = max_length - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for a response after a {len(prompt_ids)}-token prompt; "
                f"raise max_length or set max_prompt_length below it"
            )
        response_ids = response_ids[:room]
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
        "prompt_length": len(prompt_ids),
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
