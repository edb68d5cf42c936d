"""Write the course's movie-review openings: data/prompts_train.jsonl and data/prompts_heldout.jsonl.

    python data/make_prompts.py            # rewrites both files, byte for byte the same each time

How they are made (templates, invented titles, tones, the title-disjoint
split): see `dpo_edu/prompts.py`, the one source of the generator.
"""
from __future__ import annotations

import json
from pathlib import Path

from dpo_edu.prompts import make_prompts

HERE = Path(__file__).resolve().parent


def main() -> None:
    for name, rows in make_prompts().items():
        path = HERE / f"prompts_{name}.jsonl"
        with path.open("w", encoding="utf-8", newline="\n") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows)} openings to {path.name}")


if __name__ == "__main__":
    main()
