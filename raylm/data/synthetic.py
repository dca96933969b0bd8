"""A generated, learnable corpus: tests and the demo make their data at run time and no
third-party text is committed.

Documents have a topic; each topic owns its nouns and verbs, and a sentence follows a
fixed grammar. So next-token prediction, masked-token prediction and next-sentence
prediction (same topic or not) all have signal a tiny model can learn in seconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ADJECTIVES = ["red", "small", "quiet", "bright", "old", "green", "swift", "calm", "tall", "dark"]
PREPOSITIONS = ["near", "under", "beside", "behind", "above"]
TOPICS = {
    "sea": (
        ["ship", "wave", "sailor", "harbor", "gull", "anchor"],
        ["sails", "drifts", "crashes", "floats"],
    ),
    "farm": (
        ["cow", "barn", "farmer", "field", "tractor", "hen"],
        ["grazes", "plows", "grows", "rests"],
    ),
    "city": (
        ["bus", "tower", "driver", "street", "market", "train"],
        ["honks", "rises", "waits", "hums"],
    ),
    "forest": (
        ["tree", "fox", "ranger", "trail", "owl", "river"],
        ["sways", "hunts", "flows", "watches"],
    ),
}


def sentence(rng: random.Random, topic: str) -> str:
    nouns, verbs = TOPICS[topic]
    return (
        f"the {rng.choice(ADJECTIVES)} {rng.choice(nouns)} {rng.choice(verbs)} "
        f"{rng.choice(PREPOSITIONS)} the {rng.choice(nouns)}."
    )


def documents(n_docs: int, seed: int = 0, sentences: tuple[int, int] = (4, 8)) -> list[str]:
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    return [
        " ".join(sentence(rng, topic) for _ in range(rng.randint(*sentences)))
        for topic in (rng.choice(topics) for _ in range(n_docs))
    ]


def labeled_documents(
    n_docs: int, seed: int = 0, sentences: tuple[int, int] = (1, 3)
) -> list[dict]:
    """Short documents labeled with their topic: a learnable classification task."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    rows = []
    for _ in range(n_docs):
        topic = rng.choice(topics)
        text = " ".join(sentence(rng, topic) for _ in range(rng.randint(*sentences)))
        rows.append({"text": text, "label": topic})
    return rows


def write_labeled(path: str | Path, n_docs: int, seed: int = 0) -> Path:
    """Write ``{"text", "label"}`` rows as ``.jsonl`` (or ``.csv`` / ``.parquet``)."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(labeled_documents(n_docs, seed))
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


def write_corpus(path: str | Path, n_docs: int, seed: int = 0) -> Path:
    """Write ``.txt`` (blank line between documents) or ``.jsonl`` ({"text": ...})."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = documents(n_docs, seed)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    else:
        path.write_text("\n\n".join(docs) + "\n")
    return path


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="Write a generated, learnable text corpus.")
    p.add_argument("path")
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_corpus(a.path, a.docs, a.seed))


if __name__ == "__main__":
    main()
