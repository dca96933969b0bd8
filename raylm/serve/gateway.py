"""The HTTP ingress: FastAPI routes that check a request, pick the model, and call it:
through its deployment's handle, or in this process when the app serves one model.

Every user mistake is a 4xx whose ``error`` names the field (never a 500); a model
deployment whose queue is full answers 503 with ``Retry-After``, and the next request
after the queue drains is served as usual.

(No ``from __future__ import annotations`` here: FastAPI reads the route parameters'
annotations at import, and as strings under ``serve.ingress`` it takes the request
body for a query parameter.)
"""

import asyncio
import hmac
import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from .schemas import (
    ClassifyResponse,
    FillMaskRequest,
    FillMaskResponse,
    GenerateRequest,
    GenerateResponse,
    TagResponse,
    TextsRequest,
)

api = FastAPI(
    title="raylm",
    description="Classification, tagging, fill-mask and generation with raylm models.",
    version="1",
)


class RequestError(Exception):
    """A bad request: HTTP ``status`` with ``field: message``."""

    def __init__(self, status: int, field: str, message: str):
        self.status, self.field, self.message = status, field, message


def _error(status: int, field: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": f"{field}: {message}", "field": field}, status_code=status, headers=headers
    )


@api.exception_handler(RequestError)
async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
    return _error(exc.status, exc.field, exc.message)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """pydantic's error list -> the first error as ``field: message`` (422)."""
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return _error(400, "body", f"malformed JSON ({first.get('ctx', {}).get('error', '')})")
    field = ".".join(loc) or "body"
    return _error(422, field, first.get("msg", "invalid value"))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's and Starlette's own 4xx (an unknown path, a wrong method, a body that
    would not parse) in the same ``{error, field}`` shape as raylm's."""
    if exc.status_code == 404:
        field, message = "path", f"no route {request.url.path}; see /docs"
    elif exc.status_code == 405:
        field, message = "method", f"{request.method} is not allowed here"
    elif isinstance(exc.__cause__, RecursionError):
        field, message = "body", "JSON nested too deeply"
    else:
        field, message = "body", str(exc.detail)
    return _error(exc.status_code, field, message, getattr(exc, "headers", None))


def answer(payload: dict[str, Any]) -> JSONResponse:
    """A route's answer as it is: built by raylm's own code in the shape its
    ``response_model`` documents (the serve tests compare them), so FastAPI's second
    validation and serialization pass, per request, is skipped."""
    return JSONResponse(payload)


class Overloaded(Exception):
    """The model deployment's queue is full: 503, come back in ``retry_after_s``."""

    def __init__(self, retry_after_s: int):
        self.retry_after_s = retry_after_s


@api.exception_handler(Overloaded)
async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
    return _error(
        503,
        "model",
        "the model's request queue is full; retry later",
        {"Retry-After": str(exc.retry_after_s)},
    )


def read_token(access: dict[str, Any]) -> str | None:
    """The bearer token ``access`` points at (an env var's value or a file's text), or
    None when auth is off. Raises ValueError naming the key when it points at nothing."""
    env, file = access.get("auth_token_env"), access.get("auth_token_file")
    if env and file:
        raise ValueError("serve.auth_token_env: give one of them or serve.auth_token_file")
    if env:
        token = os.environ.get(env, "").strip()
        if not token:
            raise ValueError(f"serve.auth_token_env: {env} is not set (or empty) here")
        return token
    if file:
        path = Path(file).expanduser()
        token = path.read_text().strip() if path.is_file() else ""
        if not token:
            raise ValueError(f"serve.auth_token_file: {file} is missing or empty")
        return token
    return None


# This replica's request guard (Gateway.__init__ sets it; each replica is a process).
_GUARD: dict[str, Any] = {"token": None, "cors": None, "max_body_bytes": None}
JSON_TYPES = ("application/json",)


class RequestGuard:
    """What every request passes before a route sees it, as plain ASGI (a streamed
    answer is not buffered):

    - CORS (Starlette's own rules, for the configured origins); a browser's preflight
      carries no credentials, so it comes first;
    - the bearer token on every route but /healthz: 401 without one, 403 with a wrong
      one (compared in constant time);
    - a POST body: JSON (415 otherwise) of at most ``max_body_bytes`` (413, counted as
      it arrives, so a client cannot make a replica hold more by lying about or leaving
      out Content-Length)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        token, cors, limit = _GUARD["token"], _GUARD["cors"], _GUARD["max_body_bytes"]
        if token is None and cors is None and scope["method"] != "POST":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if cors is not None:
            origin = request.headers.get("origin")
            preflight = (
                request.method == "OPTIONS" and "access-control-request-method" in request.headers
            )
            if origin and preflight:
                response = cors.preflight_response(request_headers=request.headers)
                return await response(scope, receive, send)
            if origin and cors.is_allowed_origin(origin):
                send = _with_cors_headers(send, cors, origin)
        if token and not request.url.path.endswith("/healthz"):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                denied = _error(
                    401,
                    "authorization",
                    "this server wants 'Authorization: Bearer <token>'",
                    {"WWW-Authenticate": "Bearer"},
                )
                return await denied(scope, receive, send)
            if not hmac.compare_digest(given.strip().encode(), token.encode()):
                denied = _error(403, "authorization", "the token is not this server's")
                return await denied(scope, receive, send)
        if request.method == "POST":
            kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
            if kind and kind not in JSON_TYPES and not kind.endswith("+json"):
                refused = _error(415, "content-type", f"is {kind}; send application/json")
                return await refused(scope, receive, send)
            if limit is not None:
                body = await _read_at_most(receive, limit)
                if body is None:
                    refused = _error(413, "body", f"is larger than {limit} bytes (the limit)")
                    return await refused(scope, receive, send)
                receive = _replay(body, receive)
        return await self.app(scope, receive, send)


async def _read_at_most(receive, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """``receive`` that hands the app the body already read, then the client's own."""
    sent = False

    async def receiving():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receiving


def _with_cors_headers(send, cors: CORSMiddleware, origin: str):
    """``send`` that adds the CORS headers for an allowed ``origin`` to the response."""
    from starlette.datastructures import MutableHeaders

    async def sending(message):
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers.update(cors.simple_headers)
            if not cors.allow_all_origins:
                headers["Access-Control-Allow-Origin"] = origin
                headers.add_vary_header("Origin")
        await send(message)

    return sending


api.add_middleware(RequestGuard)


def configure_guard(access: dict[str, Any], max_body_bytes: int | None) -> None:
    """Set this process's request guard from a Gateway's args.

    A module function, not code in ``Gateway.__init__``: Serve ships the deployment class
    by value, and a by-value function gets copies of the module globals it names, so a
    ``_GUARD`` written there would not be the one the middleware reads (measured: the
    token was set and every request passed)."""
    _GUARD["token"] = read_token(access)
    _GUARD["max_body_bytes"] = max_body_bytes
    origins = access.get("cors_origins") or []
    _GUARD["cors"] = (
        CORSMiddleware(
            app=None,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
        if origins
        else None
    )


# Handlers are registered before the class: serve.ingress takes the app as it is then.
@serve.deployment
@serve.ingress(api)
class Gateway:
    def __init__(
        self,
        models: dict[str, DeploymentHandle | dict[str, Any]],
        limits: dict[str, Any],
        access: dict[str, Any] | None = None,
    ):
        """``models`` maps a name to its deployment's handle, or to a ModelServer's
        arguments (built here: the one-model app)."""
        from .replica import InProcess

        self.handles = {
            name: InProcess(**m) if isinstance(m, dict) else m for name, m in models.items()
        }
        self.limits = limits
        configure_guard(access or {}, limits.get("max_body_bytes"))
        self.infos: dict[str, dict] = {}
        self.infos_lock = asyncio.Lock()

    async def _infos(self) -> dict[str, dict]:
        """Each model's info, asked of its deployment once (it knows its mask token and
        device); concurrent first requests wait for the same answer."""
        async with self.infos_lock:
            if not self.infos:
                self.infos = {
                    name: await self._call(handle.info) for name, handle in self.handles.items()
                }
        return self.infos

    async def _pick(self, requested: str | None, endpoint: str):
        """The named model (which must answer the endpoint), or the only model that does."""
        infos = await self._infos()
        if requested is not None:
            if requested not in infos:
                raise RequestError(
                    404, "model", f"unknown model {requested!r}; served: {', '.join(infos)}"
                )
            info = infos[requested]
            if info["endpoint"] != endpoint:
                raise RequestError(
                    400,
                    "model",
                    f"{requested!r} is a {info['task']} model; it answers {info['endpoint']}, "
                    f"not {endpoint}",
                )
            return requested, self.handles[requested]
        able = [n for n, i in infos.items() if i["endpoint"] == endpoint]
        if len(able) != 1:
            have = ", ".join(f"{n} ({i['task']})" for n, i in infos.items())
            problem = "no served model" if not able else "several served models"
            raise RequestError(
                400 if not able else 422,
                "model",
                f"{problem} answer {endpoint}; served: {have}" + ("; name one" if able else ""),
            )
        return able[0], self.handles[able[0]]

    def _check_texts(self, texts: list[str]) -> None:
        if len(texts) > self.limits["max_texts"]:
            raise RequestError(
                422,
                "texts",
                f"at most {self.limits['max_texts']} texts per request, got {len(texts)}",
            )
        for i, t in enumerate(texts):
            if not t.strip():
                raise RequestError(422, f"texts.{i}", "is empty")
            if len(t) > self.limits["max_chars"]:
                raise RequestError(
                    422,
                    f"texts.{i}",
                    f"has {len(t)} characters; at most {self.limits['max_chars']}",
                )

    async def _call(self, method, *args):
        try:
            return await method.remote(*args)
        except BackPressureError:
            raise Overloaded(self.limits["retry_after_s"]) from None

    @api.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(self, body: TextsRequest):
        self._check_texts(body.texts)
        name, handle = await self._pick(body.model, "/v1/classify")
        return answer({"model": name, "results": await self._call(handle.classify, body.texts)})

    @api.post("/v1/tag", response_model=TagResponse)
    async def tag(self, body: TextsRequest):
        self._check_texts(body.texts)
        name, handle = await self._pick(body.model, "/v1/tag")
        return answer({"model": name, "results": await self._call(handle.tag, body.texts)})

    @api.post("/v1/fill-mask", response_model=FillMaskResponse)
    async def fill_mask(self, body: FillMaskRequest):
        self._check_texts(body.texts)
        name, handle = await self._pick(body.model, "/v1/fill-mask")
        mask = (await self._infos())[name]["mask_token"]
        for i, t in enumerate(body.texts):
            if mask not in t:
                raise RequestError(422, f"texts.{i}", f"has no mask token {mask}")
        results = await self._call(handle.fill_mask, (body.texts, body.top_k))
        return answer({"model": name, "results": results})

    @api.post("/v1/generate", response_model=GenerateResponse)
    async def generate(self, body: GenerateRequest):
        if len(body.prompt) > self.limits["max_chars"]:
            raise RequestError(
                422,
                "prompt",
                f"has {len(body.prompt)} characters; at most {self.limits['max_chars']}",
            )
        if body.max_new_tokens > self.limits["max_new_tokens"]:
            raise RequestError(422, "max_new_tokens", f"at most {self.limits['max_new_tokens']}")
        name, handle = await self._pick(body.model, "/v1/generate")
        vocab = (await self._infos())[name]["vocab_size"]
        if body.top_k > vocab:
            raise RequestError(422, "top_k", f"at most {vocab} (the vocabulary), or 0 for all")
        sampling = body.model_dump(
            include={"max_new_tokens", "temperature", "top_k", "top_p", "seed"}
        )
        if not body.stream:
            text = await self._call(handle.generate, body.prompt, sampling)
            return answer({"model": name, "text": text})
        stream = handle.options(stream=True).generate_stream.remote(body.prompt, sampling)
        try:  # the first piece tells overload apart before the 200 goes out
            first = await stream.__anext__()
        except StopAsyncIteration:
            first = None
        except BackPressureError:
            raise Overloaded(self.limits["retry_after_s"]) from None

        async def events():
            if first is not None:
                yield f"data: {json.dumps({'text': first})}\n\n"
                async for piece in stream:
                    yield f"data: {json.dumps({'text': piece})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @api.get("/v1/models")
    async def models(self):
        """Each model's description and what one of its replicas has served so far."""
        fresh = [await self._call(h.info) for h in self.handles.values()]
        return {"models": [{k: v for k, v in i.items() if k != "model_dir"} for i in fresh]}

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "models": list(self.handles)}
