"""A rerank service over HTTP (``pip install 'mixencoder[service]'``; ``mixencoder serve``).

The request shapes search engines and RAG frameworks already send, so that a provider's client
pointed at this server's base URL works unchanged:

* ``POST /rerank``: text-embeddings-inference (TEI): ``{query, texts, raw_scores, return_text,
  truncate}`` -> ``[{index, score, text?}]``, best first.
* ``POST /v2/rerank`` (Cohere v2) and ``POST /v1/rerank`` (Jina, Infinity, Cohere v1):
  ``{model, query, documents, top_n, return_documents}`` -> ``{id, model, results: [{index,
  relevance_score, document?: {text}}], meta}``, best first.
* ``POST /store/rerank``: scores from the precomputed candidate store, the endpoint only this
  project can serve fast: ``{query, docids, top_n?, first_stage_scores?, fusion?}`` ->
  ``{results: [{docid, index, score}], fusion}``, exactly what :meth:`Reranker.rerank` returns.
* ``GET /health`` (model and store fingerprints, counts, limits) and ``GET /metrics``
  (Prometheus text: requests by endpoint and status, a latency histogram, candidates scored).

Scores: ``score`` (TEI) and ``relevance_score`` are ``sigmoid(model score)`` unless the request
sets ``raw_scores: true`` (the order is the same); the store endpoint returns the model's (or
the fused) score as :meth:`Reranker.rerank` does. Ties go to the lower index (the docid in the
store endpoint, as in every run of this package).

Errors are JSON ``{"error": message, "error_type": kind}`` with a 4xx status naming the problem
(400 malformed JSON, 404 unknown docids or path, 413 over a limit, 422 invalid request); an
unexpected failure is a 500 with no stack trace (it goes to the server log). The server loads
the model (and store) once, binds 127.0.0.1 unless told otherwise, and never opens a path or
loads a model named in a request (``model`` in a request is echoed back, never used).
Scoring runs on one worker thread, so concurrent requests are scored one after another, each
exactly as alone, while the event loop keeps accepting them.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

try:
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mixencoder.service needs FastAPI and uvicorn; install them with: pip install 'mixencoder[service]'"
    ) from e

from .fusion import FUSION_METHODS, Fusion
from .rerank import Reranker, fusion_from_args

logger = logging.getLogger(__name__)

#: Upper bounds of the latency histogram, in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ENDPOINTS = ("/rerank", "/v1/rerank", "/v2/rerank", "/store/rerank", "/health", "/metrics")


@dataclass(frozen=True)
class ServiceLimits:
    """Per-request limits; each one exceeded is a 413 naming it.

    Attributes:
        max_documents: texts (or docids) per request.
        max_document_chars: characters per text.
        max_query_chars: characters of the query.
        max_body_bytes: bytes of the request body (checked before it is parsed).
    """

    max_documents: int = 1000
    max_document_chars: int = 10_000
    max_query_chars: int = 2_000
    max_body_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServiceLimits.{name} must be a positive int, got {value!r}")


class ServiceError(Exception):
    """A request the service refuses: becomes ``{"error", "error_type", **extra}`` with ``status``."""

    def __init__(self, status: int, error_type: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.error_type, self.message, self.extra = status, error_type, message, extra


# ---------------------------------------------------------------------- request shapes


class _Request(BaseModel):
    # Strict: a number is not a string, "5" is not an int. Unknown fields of the providers'
    # shapes are ignored so that their clients' extra options do not break a call.
    model_config = ConfigDict(strict=True, extra="ignore")


class TEIRerankRequest(_Request):
    """text-embeddings-inference ``/rerank``."""

    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = False  # accepted for compatibility: inputs are always truncated to the model's max lengths
    truncation_direction: Literal["Left", "Right", "left", "right"] = "Right"


class DocumentObject(_Request):
    text: str


class ProviderRerankRequest(_Request):
    """Cohere v2 ``/v2/rerank`` and Jina / Infinity / Cohere v1 ``/v1/rerank``."""

    model: str | None = None  # echoed back; this server serves one model
    query: str
    documents: list[str | DocumentObject]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    raw_scores: bool = False


class FusionRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    method: Literal["none", "interpolate", "rrf"]
    alpha: float = 0.0
    rrf_k: float = 60.0


class StoreRerankRequest(BaseModel):
    """``/store/rerank``: candidates by docid, their reps from the store."""

    model_config = ConfigDict(strict=True, extra="forbid")

    query: str
    docids: list[str]
    top_n: int | None = Field(default=None, ge=1)
    first_stage_scores: list[float] | dict[str, float] | None = None
    fusion: FusionRequest | None = None


# ---------------------------------------------------------------------- metrics


class Metrics:
    """Request counts by (endpoint, status), a latency histogram by endpoint, candidates scored.

    Updated from the event loop thread only; :meth:`render` writes Prometheus' text format.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self.candidates_scored = 0
        self.started = time.time()

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
            counts = self.buckets.setdefault(endpoint, [0] * (len(LATENCY_BUCKETS) + 1))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self.sums[endpoint] = self.sums.get(endpoint, 0.0) + seconds

    def add_candidates(self, n: int) -> None:
        with self._lock:
            self.candidates_scored += n

    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP mixencoder_requests_total HTTP requests by endpoint and status code.",
                "# TYPE mixencoder_requests_total counter",
            ]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'mixencoder_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            lines += [
                "# HELP mixencoder_request_duration_seconds Request latency by endpoint.",
                "# TYPE mixencoder_request_duration_seconds histogram",
            ]
            for endpoint, counts in sorted(self.buckets.items()):
                for bound, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], counts):
                    lines.append(f'mixencoder_request_duration_seconds_bucket{{endpoint="{endpoint}",le="{bound}"}} {n}')
                lines.append(f'mixencoder_request_duration_seconds_sum{{endpoint="{endpoint}"}} {self.sums[endpoint]:.6f}')
                lines.append(f'mixencoder_request_duration_seconds_count{{endpoint="{endpoint}"}} {counts[-1]}')
            lines += [
                "# HELP mixencoder_candidates_scored_total Candidates scored.",
                "# TYPE mixencoder_candidates_scored_total counter",
                f"mixencoder_candidates_scored_total {self.candidates_scored}",
                "# HELP mixencoder_uptime_seconds Seconds since the service started.",
                "# TYPE mixencoder_uptime_seconds gauge",
                f"mixencoder_uptime_seconds {time.time() - self.started:.3f}",
            ]
        return "\n".join(lines) + "\n"


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    import json

    data = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
    })
    await send({"type": "http.response.body", "body": data})


class _MetricsMiddleware:
    """Times every HTTP request (including those refused by the body limit)."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.observe(endpoint, status["code"], time.perf_counter() - start)


class _BodyLimitMiddleware:
    """Refuses a request body over ``limit`` bytes with a 413, before anything parses it.

    A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted
    as it arrives and never buffered past the limit (the rest is read and dropped, up to
    ``16 * limit``, so that the client gets the 413 instead of a reset connection).
    """

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    def _refusal(self, size: str) -> dict[str, Any]:
        return {
            "error": f"request body of {size} is over this server's limit of {self.limit} bytes "
            "(mixencoder serve --max-body-bytes)",
            "error_type": "PayloadTooLarge",
        }

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(send, 413, self._refusal(f"{int(declared)} bytes"))
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body = message.get("body", b"")
            size += len(body)
            if size <= self.limit:
                chunks.append(body)
            elif size > 16 * self.limit:
                break
            more = message.get("more_body", False)
        if size > self.limit:
            await _send_json(send, 413, self._refusal(f"more than {self.limit} bytes" if more else f"{size} bytes"))
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ---------------------------------------------------------------------- the service


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _order(scores: Sequence[float]) -> list[int]:
    """Indices best first, ties by index."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


class RerankService:
    """The model (and store) behind the HTTP endpoints, loaded once; validation and scoring.

    Args:
        model: any :class:`~mixencoder.models.Scorer`.
        store: its :class:`~mixencoder.CandidateStore`, for ``/store/rerank``; ``None``: that
            endpoint answers 404.
        limits: per-request limits.
        fusion: the store endpoint's default fusion (a request may pass its own).
        batch_size: candidates encoded per batch (text endpoints).
        model_name: the name echoed in responses (never a path).
    """

    def __init__(
        self,
        model: Any,
        store: Any | None = None,
        *,
        limits: ServiceLimits | None = None,
        fusion: Fusion | None = None,
        batch_size: int = 32,
        model_name: str = "mixencoder",
    ):
        self.model = model
        self.store = store
        self.limits = limits or ServiceLimits()
        self.model_name = model_name
        self.batch_size = batch_size
        # One text reranker and one store reranker, built once (a store check hashes the weights).
        self.text_reranker = Reranker(model, None, batch_size=batch_size)
        self.store_reranker = None if store is None else Reranker(model, store, batch_size=batch_size, fusion=fusion)
        self.fingerprint = model.candidate_fingerprint()
        self.metrics = Metrics()
        # Scoring is serialised on one thread: torch already uses the cores within one call.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixencoder-score")

    # ------------------------------------------------------------------ validation

    def _check_query(self, query: str) -> None:
        if not query.strip():
            raise ServiceError(422, "Validation", "query is empty: pass the query text")
        if len(query) > self.limits.max_query_chars:
            raise ServiceError(
                413, "PayloadTooLarge",
                f"query has {len(query)} characters; this server takes at most "
                f"{self.limits.max_query_chars} (mixencoder serve --max-query-chars)",
            )

    def _check_count(self, n: int, field: str) -> None:
        if n == 0:
            raise ServiceError(422, "Validation", f"{field} is empty: pass at least one")
        if n > self.limits.max_documents:
            raise ServiceError(
                413, "PayloadTooLarge",
                f"{field} has {n} entries; this server takes at most {self.limits.max_documents} "
                "per request (mixencoder serve --max-documents)",
            )

    def _check_texts(self, texts: Sequence[str], field: str) -> None:
        self._check_count(len(texts), field)
        for i, text in enumerate(texts):
            if not text.strip():
                raise ServiceError(422, "Validation", f"{field}[{i}] is empty: every text must hold some text")
            if len(text) > self.limits.max_document_chars:
                raise ServiceError(
                    413, "PayloadTooLarge",
                    f"{field}[{i}] has {len(text)} characters; this server takes at most "
                    f"{self.limits.max_document_chars} per text (mixencoder serve --max-document-chars)",
                )

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # ------------------------------------------------------------------ scoring

    def _score_texts(self, query: str, texts: list[str]) -> list[float]:
        ids = [str(i) for i in range(len(texts))]
        ranked = self.text_reranker.rerank(query, ids, texts)
        by_id = {r.docid: r.score for r in ranked}
        return [by_id[i] for i in ids]

    async def score_texts(self, query: str, texts: list[str], field: str) -> list[float]:
        self._check_query(query)
        self._check_texts(texts, field)
        scores = await self._run(self._score_texts, query, texts)
        self.metrics.add_candidates(len(texts))
        return scores

    async def tei(self, req: TEIRerankRequest) -> list[dict[str, Any]]:
        scores = await self.score_texts(req.query, req.texts, "texts")
        out = []
        for i in _order(scores):
            hit: dict[str, Any] = {"index": i, "score": scores[i] if req.raw_scores else _sigmoid(scores[i])}
            if req.return_text:
                hit["text"] = req.texts[i]
            out.append(hit)
        return out

    async def provider(self, req: ProviderRerankRequest, api_version: str) -> dict[str, Any]:
        texts = [d if isinstance(d, str) else d.text for d in req.documents]
        scores = await self.score_texts(req.query, texts, "documents")
        results = []
        for i in _order(scores)[: req.top_n]:
            hit: dict[str, Any] = {"index": i, "relevance_score": scores[i] if req.raw_scores else _sigmoid(scores[i])}
            if req.return_documents:
                hit["document"] = {"text": texts[i]}
            results.append(hit)
        return {
            "id": str(uuid.uuid4()),
            "model": self.model_name,
            "results": results,
            "meta": {"api_version": {"version": api_version}, "billed_units": {"search_units": 1}},
        }

    async def store_rerank(self, req: StoreRerankRequest) -> dict[str, Any]:
        if self.store_reranker is None:
            raise ServiceError(404, "NoStore", "this server has no candidate store; start it with mixencoder serve --store DIR")
        self._check_query(req.query)
        self._check_count(len(req.docids), "docids")
        seen: set[str] = set()
        duplicates = sorted({d for d in req.docids if d in seen or seen.add(d)})
        if duplicates:
            raise ServiceError(422, "Validation", f"docids holds {len(duplicates)} duplicate(s): {duplicates[:20]}")
        unknown = self.store.missing(req.docids)
        if unknown:
            raise ServiceError(
                404, "UnknownDocids",
                f"{len(unknown)} docid(s) are not in the candidate store: {unknown[:20]}"
                f"{' ...' if len(unknown) > 20 else ''}",
                unknown_docids=unknown[:1000],
            )
        reranker = self.store_reranker
        if req.fusion is not None:
            try:
                fusion = Fusion(req.fusion.method, alpha=req.fusion.alpha, rrf_k=req.fusion.rrf_k)
            except ValueError as e:
                raise ServiceError(422, "Validation", f"fusion: {e}") from e
            # Same model and store, another fusion: no need to re-check the store.
            reranker = copy.copy(self.store_reranker)
            reranker.fusion = fusion
        # As Reranker.rerank: the default fusion applies when the request carries first-stage
        # scores; an explicit one (server flag or request) needs them.
        if req.first_stage_scores is None and reranker.fusion is not None and reranker.fusion.uses_first_stage:
            raise ServiceError(
                422, "Validation",
                f"fusion {reranker.fusion_in_use} combines the model's score with the first stage's, but the "
                'request has no first_stage_scores; pass them, or "fusion": {"method": "none"}',
            )
        ranked = await self._run(reranker.rerank, req.query, req.docids, None, req.first_stage_scores)
        self.metrics.add_candidates(len(req.docids))
        position = {d: i for i, d in enumerate(req.docids)}
        return {
            "results": [{"docid": r.docid, "index": position[r.docid], "score": r.score} for r in ranked[: req.top_n]],
            "fusion": str(reranker.fusion_in_use) if req.first_stage_scores is not None else "none",
        }

    def health(self) -> dict[str, Any]:
        from . import __version__

        store = None
        if self.store is not None:
            store = {"count": len(self.store), "fingerprint": self.store.fingerprint, "search_metric": self.store.search_metric}
        return {
            "status": "ok",
            "version": __version__,
            "model": {"name": self.model_name, "class": type(self.model).__name__, "fingerprint": self.fingerprint},
            "store": store,
            "fusion": None if self.store_reranker is None else str(self.store_reranker.fusion_in_use),
            "limits": asdict(self.limits),
            "requests_served": self.metrics.total_requests(),
        }


def _validation_message(exc: RequestValidationError, content_type: str) -> tuple[int, str, str]:
    """``(status, error_type, message)`` of a request FastAPI could not parse into its model."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
        return 400, "InvalidJSON", f"the request body is not valid JSON{': ' + detail if detail else ''}"
    whole_body = [e for e in errors if tuple(e.get("loc", ())) == ("body",)]
    if whole_body:
        if "json" not in content_type:
            return 415, "UnsupportedMediaType", (
                f"the request body must be JSON sent with content-type: application/json (got {content_type or 'none'!r})"
            )
        if whole_body[0].get("type") == "missing":
            return 422, "Validation", "the request body is empty: send a JSON object"
        return 422, "Validation", "the request body must be a JSON object with this endpoint's fields"
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "Validation", "invalid request: " + "; ".join(parts) + more


def create_app(service: RerankService) -> FastAPI:
    """The FastAPI application over ``service`` (with the body limit and the metrics)."""
    app = FastAPI(title="mixencoder rerank service", version="1", docs_url="/docs", redoc_url=None)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Any, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"error": exc.message, "error_type": exc.error_type, **exc.extra}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Any, exc: RequestValidationError) -> JSONResponse:
        status, kind, message = _validation_message(exc, request.headers.get("content-type", ""))
        return JSONResponse({"error": message, "error_type": kind}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Any, exc: StarletteHTTPException) -> JSONResponse:
        kind = {400: "InvalidJSON", 404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        message = str(exc.detail)
        if exc.status_code == 400:  # FastAPI's own: a body that is not UTF-8 JSON
            message = f"the request body is not valid JSON in UTF-8 ({message})"
        return JSONResponse({"error": message, "error_type": kind}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(_: Any, exc: Exception) -> JSONResponse:
        logger.error("request failed", exc_info=exc)
        return JSONResponse({"error": "internal server error; see the server log", "error_type": "Internal"}, status_code=500)

    async def _library_errors(call: Any) -> Any:
        # The library's own messages name the problem; they are the 422 (404 for missing
        # candidates) a client needs. Anything else is a 500 without details.
        try:
            return await call
        except KeyError as e:
            raise ServiceError(404, "UnknownDocids", str(e.args[0]) if e.args else "unknown docid") from e
        except (ValueError, TypeError) as e:
            raise ServiceError(422, "Validation", str(e)) from e

    @app.post("/rerank")
    async def rerank_tei(req: TEIRerankRequest) -> Any:
        return await _library_errors(service.tei(req))

    @app.post("/v1/rerank")
    async def rerank_v1(req: ProviderRerankRequest) -> Any:
        return await _library_errors(service.provider(req, "1"))

    @app.post("/v2/rerank")
    async def rerank_v2(req: ProviderRerankRequest) -> Any:
        return await _library_errors(service.provider(req, "2"))

    @app.post("/store/rerank")
    async def rerank_store(req: StoreRerankRequest) -> Any:
        return await _library_errors(service.store_rerank(req))

    @app.get("/health")
    async def health() -> Any:
        return service.health()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Any:
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    app.add_middleware(_BodyLimitMiddleware, limit=service.limits.max_body_bytes)
    app.add_middleware(_MetricsMiddleware, metrics=service.metrics)  # outermost: counts 413s too
    return app


# ---------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    from .cli import add_inference_flags

    d = ServiceLimits()
    p = argparse.ArgumentParser(
        prog="mixencoder serve",
        description="HTTP rerank service: TEI /rerank, Cohere /v2/rerank, Jina/Infinity /v1/rerank, "
        "/store/rerank over a candidate store, /health, /metrics.",
    )
    p.add_argument("--model", default=None, help="saved model directory (any registered type) or a backbone for a fresh MixEncoder (default: bundled MiniLM)")
    add_inference_flags(p)
    p.add_argument("--store", type=Path, default=None, help="candidate store built by the same model (enables /store/rerank)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-documents", type=int, default=d.max_documents, help="texts or docids per request")
    p.add_argument("--max-document-chars", type=int, default=d.max_document_chars, help="characters per text")
    p.add_argument("--max-query-chars", type=int, default=d.max_query_chars, help="characters per query")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="bytes per request body")
    p.add_argument("--fusion", choices=["default", *FUSION_METHODS], default="default",
                   help="store endpoint's fusion with first_stage_scores (default: mixencoder.fusion.DEFAULT_FUSION)")
    p.add_argument("--alpha", type=float, default=None, help="first stage's weight for --fusion interpolate")
    p.add_argument("--rrf-k", type=float, default=60.0, help="rank offset for --fusion rrf")
    p.add_argument("--batch-size", type=int, default=32, help="candidates encoded per batch")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--model-name", default=None, help="name echoed in responses (default: the model directory's name)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


def load_service_model(model: str | None, **inference_options: Any) -> Any:
    """A saved model of any registered type, or a fresh MixEncoder on a backbone (None: bundled),
    with ``candidate_layout``/``quantization`` if given."""
    from .cli import load_model_flag  # the one reading of a --model flag

    return load_model_flag(model, **inference_options)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mixencoder serve``."""
    import uvicorn

    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    limits = ServiceLimits(args.max_documents, args.max_document_chars, args.max_query_chars, args.max_body_bytes)
    fusion = fusion_from_args(args.fusion, args.alpha, args.rrf_k)  # the run-file CLI's rules
    model = load_service_model(args.model, candidate_layout=args.candidate_layout, quantization=args.quantization)
    store = None
    if args.store is not None:
        from .store import CandidateStore

        store = CandidateStore.open(args.store)
    name = args.model_name or (Path(args.model).name if args.model else "mixencoder-minilm")
    service = RerankService(model, store, limits=limits, fusion=fusion, batch_size=args.batch_size, model_name=name)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding %s: the service is reachable from other machines and has no authentication", args.host)
    logger.info("model %s loaded; store: %s", name, "none" if store is None else f"{len(store)} candidates")
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
