"""The HTTP API and the web page: ``create_app(service)`` returns a FastAPI app (OpenAPI schema at
``/openapi.json``).

Endpoints (all under ``/api`` need the bearer token when one is set):

=======  ===============================  ================================================================
GET      /                                the web page (plain HTML/JS from ``static/``; no build step, no CDN)
GET      /health                          liveness, models, queue (no token needed: it shows no data)
GET      /api/roots                       the allowed video roots and the videos under them
GET      /api/videos                      registered videos with their indexing state
POST     /api/videos                      register a video under a root: ``{"root": ..., "path": ...}`` → 202
POST     /api/videos/upload?filename=F    upload a video as the raw request body (size-limited) → 202
GET      /api/videos/{id}                 one video
GET      /api/jobs/{id}                   an indexing job's state and progress
POST     /api/ask                         ``{"video_id", "question", "options", "k", "sampler"}`` → the JSON
                                          of ``msjoe ask --json`` plus ``id`` and ``explain_url``
GET      /api/answers                     past answers, newest first
GET      /api/answers/{id}                one answer
GET      /api/answers/{id}/explain        its explain view (a self-contained HTML page)
=======  ===============================  ================================================================

Errors are JSON ``{"detail": "..."}`` with a 4xx status saying what to fix (403 for refused paths, 404, 409
for a video still being indexed, 413 for an upload over the limit, 415 for an upload that is not a video, 422
for bad fields, 503 when the indexing queue is full); anything unexpected is a 500 with a fixed message, the
traceback going to the server's log only. FastAPI's ``/docs`` and ``/redoc`` pages are off: they load their
scripts from a CDN.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from msjoe import __version__
from msjoe.errors import MsjoeError
from msjoe.explain import CONTENT_SECURITY_POLICY as EXPLAIN_CSP
from msjoe.serve.errors import BadRequest, ServiceError
from msjoe.serve.service import MAX_K, MAX_OPTIONS, VideoService

logger = logging.getLogger(__name__)

# The page loads its own script and style only, talks to this server only, and shows explain views in sandboxed
# srcdoc frames (which inherit this policy: their inline styles and data: images are allowed).
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
STATIC = resources.files("msjoe.serve") / "static"


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="The video's path relative to the root, e.g. 'talks/2024/keynote.mp4'.")
    root: str | None = Field(None, description="The root's name (GET /api/roots); optional with one root.")


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    video_id: str = Field(description="A registered, indexed video (GET /api/videos).", max_length=64)
    question: str = Field(min_length=1, max_length=4000)
    options: list[Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=list,
        max_length=MAX_OPTIONS,
        description="Answer options, lettered A, B, ... (none: free-form).",
    )
    k: int | None = Field(None, ge=1, le=MAX_K, description="Key frames shown to the MLLM [default: the server's].")
    sampler: str | None = Field(None, description="Sampler name [default: the server's].", max_length=64)
    explain: bool = Field(True, description="Also build the explain view (thumbnails are decoded again).")


class Video(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    name: str
    source: str
    state: str = Field(description="queued, indexing, indexed or failed")
    job: str | None
    error: str | None
    candidates: int | None
    duration: float | None
    progress: dict[str, Any] | None


class Job(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    video_id: str
    state: str = Field(description="queued, running, done or failed")
    progress: dict[str, Any]
    cached: bool | None = Field(description="True when the features were already cached (nothing decoded).")
    error: str | None


class Registered(BaseModel):
    video: Video
    job: Job | None = Field(description="None when the video was already indexed.")


class AnswerRecord(BaseModel):
    """The JSON of ``msjoe ask --json`` plus the answer's id, video id and explain link."""

    model_config = ConfigDict(extra="allow")
    id: str
    video_id: str
    video: str
    question: str
    options: list[str]
    letter: str | None
    status: str
    reply: str
    queries: list[str]
    chosen_timestamps: list[float]
    explain_url: str | None


def create_app(service: VideoService, *, token: str | None = None) -> FastAPI:
    """The app serving ``service``: starts its indexing worker on startup and stops it on shutdown."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="msjoe",
        version=__version__,
        summary="Question answering over long videos with query-selected key frames, and why it answered.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    _add_error_handlers(app, service)
    _add_security_headers(app)
    _add_page_routes(app, service, token)
    api = APIRouter(prefix="/api", dependencies=[Depends(_bearer_check(token))])
    _add_video_routes(api, service)
    _add_answer_routes(api, service)
    app.include_router(api)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def _add_security_headers(app: FastAPI) -> None:
    """Every response says not to sniff content types and not to send a referrer."""

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response


def _bearer_check(token: str | None) -> Callable[..., None]:
    """The dependency of every ``/api`` route: with a ``token``, a request must carry it as its bearer token
    (compared in constant time), else it gets a 401."""
    bearer = HTTPBearer(auto_error=False, description="Needed when the server was started with a token.")

    # A default value, not Annotated: the annotation is a string here and `bearer` a local FastAPI cannot look up.
    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return authorised


def _add_page_routes(app: FastAPI, service: VideoService, token: str | None) -> None:
    """The routes outside ``/api``, open without a token: the page itself and ``/health``."""

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"})

    @app.get("/health", summary="Liveness, models and queue")
    def health() -> dict[str, Any]:
        return {**service.health(), "version": __version__, "auth": token is not None}


def _add_video_routes(api: APIRouter, service: VideoService) -> None:
    """``/api`` routes of videos and their indexing: the roots, registering a path or an upload, a video, a job."""

    @api.get("/roots", summary="Allowed video roots and the videos under them")
    def roots() -> list[dict[str, Any]]:
        return service.roots.listing()

    @api.get("/videos", response_model=list[Video], summary="Registered videos")
    def videos() -> list[dict[str, Any]]:
        return [service.video_json(entry) for entry in service.videos.all()]

    @api.post("/videos", status_code=202, response_model=Registered, summary="Register a video under a root")
    def register(request: RegisterRequest) -> dict[str, Any]:
        entry, job = service.register_path(request.path, request.root)
        return {"video": service.video_json(entry), "job": job.to_dict() if job else None}

    @api.post(
        "/videos/upload",
        status_code=202,
        response_model=Registered,
        summary="Upload a video (the raw request body)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def upload(request: Request, filename: Annotated[str, Query(min_length=1, max_length=255)]) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise BadRequest("Content-Length must be a number of bytes")
        tmp = await service.receive_upload(filename, request.stream(), int(declared) if declared else None)
        entry, job = await run_in_threadpool(service.register_upload, tmp, filename)
        return {"video": service.video_json(entry), "job": job.to_dict() if job else None}

    @api.get("/videos/{video_id}", response_model=Video, summary="One video")
    def video(video_id: str) -> dict[str, Any]:
        return service.video_json(service.videos.get(video_id))

    @api.get("/jobs/{job_id}", response_model=Job, summary="An indexing job's state and progress")
    def job(job_id: str) -> dict[str, Any]:
        found = service.jobs.get(job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id!r} (jobs are forgotten when the server restarts)")
        return found.to_dict()


def _add_answer_routes(api: APIRouter, service: VideoService) -> None:
    """``/api`` routes of questions: asking one, the past answers, one answer and its explain view."""

    @api.post("/ask", response_model=AnswerRecord, summary="Ask a question about an indexed video")
    def ask(request: AskRequest) -> dict[str, Any]:
        return service.ask(
            request.video_id,
            request.question,
            request.options,
            k=request.k,
            sampler=request.sampler,
            explain=request.explain,
        )

    @api.get("/answers", summary="Past answers, newest first")
    def answers(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        return service.answers.summaries(min(limit, service.config.max_answers_listed))

    @api.get("/answers/{answer_id}", summary="One answer (with its similarity matrix)")
    def answer(answer_id: str) -> dict[str, Any]:
        return service.answers.get(answer_id)

    @api.get("/answers/{answer_id}/explain", response_class=HTMLResponse, summary="The answer's explain view")
    def explain(answer_id: str) -> HTMLResponse:
        return HTMLResponse(service.answers.explain_html(answer_id), headers={"Content-Security-Policy": EXPLAIN_CSP})


def _add_error_handlers(app: FastAPI, service: VideoService) -> None:
    """Every failure becomes JSON with a clear message; server paths under a root are shown as ``<root>``."""

    def answer(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"detail": service.roots.redact(message)}, status_code=status, headers=headers)

    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, error: ServiceError) -> JSONResponse:
        headers = {"Retry-After": "10"} if error.status_code == 503 else None
        return answer(error.status_code, str(error), headers)

    @app.exception_handler(MsjoeError)
    async def msjoe_error(_request: Request, error: MsjoeError) -> JSONResponse:
        return answer(422, f"{type(error).__name__}: {error}")

    @app.exception_handler(ValueError)
    async def value_error(_request: Request, error: ValueError) -> JSONResponse:
        return answer(422, str(error))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
        return answer(500, "internal error; the server's log has the details")
