"""Request and response bodies of the HTTP API (pydantic; FastAPI publishes them at /docs).

Types and fixed bounds are checked here; the limits an operator configures (texts per
request, characters per text, new tokens) are checked by the gateway, which knows them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextsRequest(_Strict):
    texts: list[StrictStr] = Field(min_length=1, description="One or more texts.")
    model: StrictStr | None = Field(
        None, description="Model name; optional when one served model has this task."
    )


class FillMaskRequest(TextsRequest):
    top_k: StrictInt = Field(5, ge=1, le=100)


class GenerateRequest(_Strict):
    prompt: StrictStr = Field(min_length=1)
    model: StrictStr | None = None
    max_new_tokens: StrictInt = Field(32, ge=1)
    temperature: float = Field(
        1.0, ge=0.0, le=10.0, description="0 (or under 1e-6) is greedy decoding."
    )
    top_k: StrictInt = Field(0, ge=0, description="0 keeps every token.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: StrictInt | None = Field(None, ge=0, lt=2**63, description="Same seed, same text.")
    stream: bool = Field(False, description="Server-sent events, one per text piece.")


class Classification(BaseModel):
    label: str
    score: float
    probabilities: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    results: list[Classification]


class Entity(BaseModel):
    type: str
    text: str
    start: int = Field(description="Character offset of the first character.")
    end: int = Field(description="Character offset just past the last character.")
    score: float = Field(description="Lowest tag probability over the entity's words.")


class Token(BaseModel):
    word: str
    tag: str
    score: float
    start: int
    end: int


class Tagging(BaseModel):
    entities: list[Entity]
    tokens: list[Token]


class TagResponse(BaseModel):
    model: str
    results: list[Tagging]


class Candidate(BaseModel):
    token: str
    score: float


class FillMaskResponse(BaseModel):
    model: str
    # per text, per mask token in order, the top_k candidates
    results: list[list[list[Candidate]]]


class GenerateResponse(BaseModel):
    model: str
    text: str
