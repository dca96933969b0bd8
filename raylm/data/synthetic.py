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


def mixed_documents(n_docs: int, seed: int = 0, noise: float = 0.05) -> list[dict]:
    """A harder classification task: each text mixes sentences of two topics and is
    labeled with the one that has more of them (3 against 2, or 2 against 1, in random
    order), so a model must weigh every sentence rather than spot one word; a ``noise``
    fraction of labels is drawn at random, which caps accuracy below 1."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    rows = []
    for _ in range(n_docs):
        major, minor = rng.sample(topics, 2)
        n = rng.choice((2, 3))
        picks = [major] * n + [minor] * (n - 1)
        rng.shuffle(picks)
        label = rng.choice(topics) if rng.random() < noise else major
        rows.append({"text": " ".join(sentence(rng, t) for t in picks), "label": label})
    return rows


def write_labeled(
    path: str | Path, n_docs: int, seed: int = 0, rows: list[dict] | None = None
) -> Path:
    """Write ``{"text", "label"}`` rows (by default :func:`labeled_documents`) as
    ``.jsonl`` (or ``.csv`` / ``.parquet``)."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows if rows is not None else labeled_documents(n_docs, seed))
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


# Tagging: people (two words: B-PER I-PER) and places (one or two words) in the topic
# grammar, so a tagger must learn both which words are entities and where each starts.
FIRST_NAMES = ["anna", "ben", "clara", "dev", "elena", "felix", "grace", "hugo"]
LAST_NAMES = ["smith", "novak", "okafor", "tanaka", "rossi", "berg"]
PLACE_WORDS = ["harbor", "valley", "station", "bridge", "meadow", "square"]
PLACE_PREFIXES = ["north", "south", "old", "new"]
TAG_TEMPLATES = [
    "PER walks to LOC .",
    "the ADJ NOUN VERB near LOC .",
    "PER and PER meet at LOC .",
    "at LOC , PER sees the ADJ NOUN .",
    "the ADJ NOUN VERB .",
]


def tagged_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    nouns, verbs = TOPICS[rng.choice(sorted(TOPICS))]
    words: list[str] = []
    tags: list[str] = []
    for slot in rng.choice(TAG_TEMPLATES).split():
        if slot == "PER":
            words += [rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)]
            tags += ["B-PER", "I-PER"]
        elif slot == "LOC":
            place = [rng.choice(PLACE_PREFIXES)] if rng.random() < 0.5 else []
            place.append(rng.choice(PLACE_WORDS))
            words += place
            tags += ["B-LOC"] + ["I-LOC"] * (len(place) - 1)
        else:
            pool = {"ADJ": ADJECTIVES, "NOUN": nouns, "VERB": verbs}.get(slot)
            words.append(rng.choice(pool) if pool else slot)
            tags.append("O")
    return words, tags


def tagged_rows(n_rows: int, seed: int = 0) -> list[dict]:
    """``{"tokens": [...], "tags": [...]}`` rows with BIO tags (PER, LOC)."""
    rng = random.Random(seed)
    return [dict(zip(("tokens", "tags"), tagged_sentence(rng), strict=True)) for _ in range(n_rows)]


def write_tagged(path: str | Path, n_rows: int, seed: int = 0) -> Path:
    """Write tagging rows as ``.jsonl`` (or ``.parquet``, which keeps the lists typed)."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(tagged_rows(n_rows, seed))
    if path.suffix == ".parquet":
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
