"""HTTP service: `POST /predict`, `POST /search`, `GET /health`, the web page at `/` (FastAPI + uvicorn).

Concurrent requests are micro-batched: each endpoint puts its items on an asyncio queue; a
worker gathers what arrives within a few milliseconds and runs one batched model call in a
single model thread, so the event loop never blocks and the model never runs twice at once.

Longer than 350 lines because the HTTP endpoints share their request checks and model state.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

log = logging.getLogger("qpairs")

MAX_CHARS = 2000          # longest question accepted
MAX_PAIRS = 256           # most pairs in one /predict request
MAX_K = 100               # most results one /search returns
MAX_BODY_BYTES = 1 << 20  # request bodies above this get 413
READ_TIMEOUT_S = 5.0  # a request body not complete this long after the app starts reading it gets 408
WEB_DIR = Path(__file__).resolve().parent / "web"



def _question(value: str) -> str:
    from .text import text_problem

    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_CHARS),
                 AfterValidator(_question)]


# ---------------------------------------------------------------- request / response schemas

class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q1: Text
    q2: Text


class PredictRequest(BaseModel):
    """Either one pair (`q1`, `q2`) or a list (`pairs`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"q1": "How do I learn Python?", "q2": "What is the best way to learn Python?"},
        {"pairs": [{"q1": "Is Java hard?", "q2": "How difficult is Java?"}]}]})
    q1: Text | None = None
    q2: Text | None = None
    pairs: list[Pair] | None = Field(default=None, min_length=1, max_length=MAX_PAIRS)

    @model_validator(mode="after")
    def _one_form(self):
        single = self.q1 is not None or self.q2 is not None
        if self.pairs is not None and single:
            raise ValueError("give either q1 and q2, or pairs, not both")
        if self.pairs is None:
            missing = [name for name in ("q1", "q2") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"missing field {' and '.join(missing)}: give q1 and q2, or a list of pairs")
        return self


class Score(BaseModel):
    probability: float
    duplicate: bool


class PredictOne(Score):
    threshold: float


class PredictMany(BaseModel):
    results: list[Score]
    threshold: float


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"question": "How do I learn Python?",
                                                                               "k": 5}]})
    question: Text
    k: int = Field(default=10, ge=1, le=MAX_K, strict=True)  # a JSON whole number: not true, "3" or 2.0


class SearchHit(BaseModel):
    id: str
    text: str
    probability: float = Field(description="calibrated probability that the question duplicates the query")
    distance: float = Field(description="the model's distance (smaller = more similar)")
    duplicate: bool = Field(description="probability at or above the model's threshold")
    score: float = Field(description="what ranked the hit, higher first (see qpairs.search)")


class SearchResponse(BaseModel):
    results: list[SearchHit]
    threshold: float
    index_size: int


# ---------------------------------------------------------------- micro-batching

class MicroBatcher:
    """Run `fn(items) -> results` (same length) once for all requests that arrive together (within `max_wait_ms`)."""

    def __init__(self, fn: Callable[[list], list], executor: ThreadPoolExecutor, max_wait_ms: float = 2.0,
                 max_batch: int = 512):
        self.fn, self.executor = fn, executor
        self.max_wait = max_wait_ms / 1000
        self.max_batch = max_batch
        self.last_requests = 1  # requests in the previous batch: how many to wait for in the next
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.stats = {"requests": 0, "batches": 0, "items": 0, "largest_batch": 0}

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def submit(self, items: list) -> list:
        """Queue `items` and wait for their results."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((items, future))
        return await future

    async def _gather(self) -> list:
        """The next batch: the first waiting request, then as many as came together last time (waiting at
        most `max_wait` for them), then whatever else is queued. A lone client never waits; N concurrent
        clients keep arriving as one batch of N (docs/results.md, "Service latency")."""
        batch = [await self.queue.get()]
        size = len(batch[0][0])
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(batch) < self.last_requests and size < self.max_batch:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
            size += len(batch[-1][0])
        while size < self.max_batch and not self.queue.empty():
            batch.append(self.queue.get_nowait())
            size += len(batch[-1][0])
        self.last_requests = len(batch)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            flat = [x for items, _ in batch for x in items]
            self.stats["requests"] += len(batch)
            self.stats["batches"] += 1
            self.stats["items"] += len(flat)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(flat))
            try:
                results = await loop.run_in_executor(self.executor, self.fn, flat)
            except Exception as exc:  # every waiting request gets the error
                log.exception("batched model call failed")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            pos = 0
            for items, future in batch:
                if not future.done():  # a client that went away leaves a cancelled future
                    future.set_result(results[pos : pos + len(items)])
                pos += len(items)


# ---------------------------------------------------------------- request size and time limits

class BodySizeLimit:
    """ASGI middleware: 413 for bodies over `max_bytes`, by Content-Length or while streaming, and 408 (then
    the connection closes) for a body not complete within `read_timeout_s`, e.g. one shorter than its
    Content-Length, which would otherwise hold the connection until the client gives up."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES, read_timeout_s: float = READ_TIMEOUT_S):
        self.app, self.max_bytes, self.read_timeout_s = app, max_bytes, read_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _send_json(send, 400, "invalid Content-Length header")
            if int(length) > self.max_bytes:
                return await _send_json(send, 413, self._message())
        received, deadline, complete = 0, None, False

        async def limited_receive():
            nonlocal received, deadline, complete
            if complete:  # after the body: e.g. waiting for a disconnect, no limit
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.read_timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"request body not received within {self.read_timeout_s:g} s "
                                         "(shorter than its Content-Length?)", headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._message())
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"


async def _send_json(send, status: int, error: str) -> None:
    response = JSONResponse({"error": error, "detail": error}, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _error_summary(errors) -> str:
    parts = []
    for e in errors:
        loc = [x for x in e.get("loc", ()) if x != "body"]
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "json_invalid":
            parts.append(f"invalid JSON at character {loc[-1] if loc else '?'}: {e.get('ctx', {}).get('error', msg)}")
        else:
            parts.append(f"{'.'.join(map(str, loc)) or 'body'}: {msg}")
    return "; ".join(parts)


# ---------------------------------------------------------------- the app

def search_each(det, index, queries: list[tuple[str, int]]) -> list:
    """Hits of each (question, k), as `index.search` gives them alone: one `search_many` per distinct k, since
    what a search re-scores can depend on k (a matching pair head's re-ranking, the base space's lexical one)."""
    out: list = [None] * len(queries)
    for k in dict.fromkeys(k for _, k in queries):
        at = [i for i, (_, ki) in enumerate(queries) if ki == k]
        for i, hits in zip(at, index.search_many(det, [queries[i][0] for i in at], k)):
            out[i] = hits
    return out


def _first_non_utf8(body: bytes, fallback: int) -> int:
    """Offset of the first byte of `body` that is not UTF-8 (`fallback` if it all decodes)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return fallback


def create_app(det, index=None, max_wait_ms: float = 2.0, max_batch: int = 512,
               max_body_bytes: int = MAX_BODY_BYTES, read_timeout_s: float = READ_TIMEOUT_S) -> FastAPI:
    """The FastAPI app serving `det` (a `DuplicateDetector`) and, optionally, a `QuestionIndex`; a request
    body must arrive within `read_timeout_s` (else 408)."""
    from .search import model_fingerprint, other_side

    if index is not None:
        index.check_model(det)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qpairs-model")

    def predict_batch(pairs: list[tuple[str, str]]) -> list[float]:
        return [float(p) for p in det.predict_proba([a for a, _ in pairs], [b for _, b in pairs])]

    def search_batch(queries: list[tuple[str, int]]) -> list:
        return search_each(det, index, queries)

    predictor = MicroBatcher(predict_batch, executor, max_wait_ms, max_batch)
    searcher = MicroBatcher(search_batch, executor, max_wait_ms, max_batch)

    @asynccontextmanager
    async def lifespan(app):
        predictor.start()
        searcher.start()
        yield
        await predictor.stop()
        await searcher.stop()
        executor.shutdown(wait=False)

    app = FastAPI(title="qpairs", version=_version(), lifespan=lifespan,
                  description="Duplicate-question detection: calibrated probabilities for question pairs, "
                              "and search for duplicates of a new question in a question bank.")
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, read_timeout_s=read_timeout_s)
    app.state.det, app.state.index = det, index
    app.state.batchers = {"predict": predictor, "search": searcher}

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
        for e in errors:
            e.pop("input", None)  # do not echo (possibly huge) input back
        summary = _error_summary(errors)
        unread = any(list(e.get("loc", [])) == ["body"] for e in errors)  # no JSON object where one was expected
        if unread and "json" not in request.headers.get("content-type", "").lower():  # e.g. curl -d without -H
            summary = f"send the body as JSON with the header Content-Type: application/json ({summary})"
        return JSONResponse({"error": summary, "detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        cause = exc.__cause__  # FastAPI's 400 "error parsing the body": bytes that are not UTF-8
        if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError):
            at = _first_non_utf8(bytes(cause.object), cause.start)  # the JSON reader may have tried UTF-16 first
            bad = cause.object[at : at + 1]
            return JSONResponse({"error": f"invalid JSON at byte {at}: {bad!r} is not UTF-8 text",
                                 "detail": [{"type": "json_invalid", "loc": ["body", at],
                                             "msg": "body is not UTF-8"}]}, status_code=422)
        if isinstance(exc.detail, str):  # every error body names its error as a 422 of the schema does
            return JSONResponse({"error": exc.detail, "detail": exc.detail}, status_code=exc.status_code,
                                headers=getattr(exc, "headers", None))
        return await http_exception_handler(request, exc)

    @app.get("/health", summary="model, index and batching status")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": {"path": str(det.path) if det.path else None, "id": model_fingerprint(det)[:12],
                      "encoder": det.config.get("encoder", {}).get("type"), "distance": det.model.distance_metric,
                      "threshold": det.threshold, "backend": det.backend,
                      **({"ensemble": det.config["ensemble"]} if "ensemble" in det.config else {})},
            "index": None if index is None else {"size": len(index), "kind": index.meta["kind"],
                                                 "path": str(index.path) if index.path else None},
            "batching": {"max_wait_ms": predictor.max_wait * 1000, "predict": predictor.stats,
                         "search": searcher.stats},
            "limits": {"max_chars": MAX_CHARS, "max_pairs": MAX_PAIRS, "max_k": MAX_K,
                       "max_body_bytes": max_body_bytes},
        }

    def refuse_emptied(texts: list[str], name: str, side: str, single: bool) -> None:
        """A 422 for a text the model's preparation empties (an HTML body with no text), before it joins a batch
        that it would fail for everyone."""
        try:
            det.refuse_emptied(texts, name, side, single)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.post("/predict", response_model=PredictOne | PredictMany, summary="duplicate probability of pairs")
    async def predict(req: PredictRequest):
        pairs = [(req.q1, req.q2)] if req.pairs is None else [(p.q1, p.q2) for p in req.pairs]
        for i, side in enumerate(("left", "right")):
            refuse_emptied([pair[i] for pair in pairs], f"q{i + 1}" if req.pairs is None else f"pairs.q{i + 1}",
                           side, req.pairs is None)
        probs = await predictor.submit(pairs)
        scores = [{"probability": p, "duplicate": p >= det.threshold} for p in probs]
        if req.pairs is None:
            return {**scores[0], "threshold": det.threshold}
        return {"results": scores, "threshold": det.threshold}

    @app.post("/search", response_model=SearchResponse, summary="likely duplicates of a question in the index")
    async def search(req: SearchRequest):
        if index is None:
            raise HTTPException(503, "no question index loaded: start the server with --index INDEX_DIR")
        refuse_emptied([req.question], "question", other_side(index.side), True)
        (hits,) = await searcher.submit([(req.question, req.k)])
        return {"results": [h.to_dict() for h in hits], "threshold": det.threshold, "index_size": len(index)}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _version() -> str:
    from . import __version__

    return __version__


def default_threads(det) -> int:
    """Model threads of a latency server. torch models (bf16 too): 1 (each micro-batch is small, spare cores keep
    serving HTTP, and OpenMP threads that spin on busy cores cost far more than they give). ONNX Runtime
    (workers sleep, never spin): up to 4 (measured on 2 cores: 2 threads cut p99 at 8 clients 287 → 55 ms)."""
    import os

    return max(1, min(4, os.cpu_count() or 1)) if _runs_onnx(det) else 1


def _runs_onnx(det) -> bool:
    """True when some encoder of `det` (an ensemble's member too) runs in ONNX Runtime."""
    return any(b.startswith("onnx") for b in det.backend.split("+"))


def configure_threads(det, threads: int | None = None) -> int:
    """Threads of a latency server (`serve`, and bench_serve.py's in-process peer); returns the model's count.

    A torch model gets `threads` torch/FAISS threads. A model with ONNX Runtime encoders gets them in its
    sessions, while torch (which then runs only the small heads and any BiLSTM member) and FAISS get one: their
    idle OpenMP workers spin and slowed ONNX Runtime and the BLAS scan of a search (search over 200k, 2 cores:
    p50 30 → 22.5 ms).
    """
    threads = default_threads(det) if threads is None else threads
    if not _runs_onnx(det):
        set_threads(threads)
    else:
        set_threads(1)
        if threads:
            det.use_backend(det.backend, threads=threads)
    return threads


def set_threads(threads: int | None) -> None:
    """Intra-op threads of torch and FAISS."""
    if threads:
        import torch

        from .search import _faiss

        torch.set_num_threads(threads)
        _faiss().omp_set_num_threads(threads)


def serve(model=None, index=None, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          backend: str = "auto", max_wait_ms: float = 2.0, threads: int | None = None) -> None:
    """`qpairs serve`: load the model (and index) and run uvicorn until interrupted."""
    import uvicorn

    from .detector import load
    from .search import QuestionIndex

    require_free_port(host, port)  # before the model loads, and before it says it serves
    det = load(model, device=device, backend=backend)
    configure_threads(det, threads)
    idx = QuestionIndex.load(index) if index else None
    app = create_app(det, idx, max_wait_ms=max_wait_ms)
    where = f"http://{host}:{port}" if port else f"a free port of {host} (uvicorn names it below)"
    log.info("serving %s%s on %s", det, f" with {idx}" if idx else "", where)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


def require_free_port(host: str, port: int) -> None:
    """A ValueError when nothing can listen on host:port (another server holds it, or the address is not this
    machine's); port 0 (any free one) always can."""
    import socket

    if not port:
        return
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind((host, port))
    except OSError as exc:
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server there?); pass "
                         "another --port") from None
