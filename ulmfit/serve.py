"""A trained classifier over HTTP (FastAPI + uvicorn), with a web page to try it.

Endpoints (every error is a JSON body ``{"error": message, "code": ..., ...}``):

* ``GET /`` the page: type or paste a text, see the label, the probabilities as bars and
  every word shaded by how much it drove the prediction;
* ``GET /health`` ``{"status": "ok", "label_kind", "classes" | "targets", "limits", ...}``;
* ``POST /predict`` ``{"texts": ["...", ...]}`` -> ``{"predictions": [...]}`` in the order
  of the texts (one :meth:`ulmfit.predict.Predictor.predict` dict each);
* ``POST /explain`` ``{"text": "...", "target": optional class}`` -> the prediction and
  each token's and word's importance (:func:`ulmfit.explain.explain`).

Limits (:class:`ServeLimits`): a body over ``max_body_bytes`` is refused with 413 before it is
parsed (its Content-Length, and the bytes actually received when there is none, are counted);
more than ``max_texts`` texts or a text over ``max_chars`` characters: 413 naming the limit;
malformed JSON or a body of the wrong shape: 422. A Predictor is not thread-safe, so one
worker thread makes every model call: requests queue for it (503 past ``max_queue`` waiting
requests) and predict requests waiting together are merged into one call of at most
``max_batch_texts`` texts (micro-batching: under load, many small requests become few
length-sorted batches).
"""

# no "from __future__ import annotations": FastAPI reads the handlers' annotations (Request)
import asyncio
import json
import os
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path

from ulmfit.errors import UserError

ONEDNN_CACHE = 32  # oneDNN primitives kept by a server (see run)


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the server, and how much work may wait."""

    max_texts: int = 64  # texts in one /predict request
    max_chars: int = 20_000  # characters in one text (about 4,000 words)
    max_body_bytes: int = 2_000_000  # request body, before it is parsed
    max_batch_texts: int = 256  # texts one model call gathers from waiting requests
    max_queue: int = 1_000  # requests waiting for the model before 503

    def check(self) -> None:
        bad = [f"{k} must be 1 or more" for k, v in asdict(self).items() if v < 1]
        if bad:
            raise UserError("; ".join(bad))


class Busy(Exception):
    """The queue of requests waiting for the model is full."""


@dataclass
class _Job:
    future: Future
    texts: list[str] | None = None  # a predict job
    call: object = None  # any other model call (explain): a function of no arguments


class ModelWorker:
    """One thread that makes every model call, in arrival order; consecutive predict jobs are
    merged into one call (up to ``max_batch_texts`` texts) and their results split again."""

    def __init__(self, predictor, max_batch_texts: int = 256, max_queue: int = 1_000) -> None:
        self.predictor = predictor
        self.max_batch_texts, self.max_queue = max_batch_texts, max_queue
        self._jobs: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.calls = 0  # model calls made (a batch of merged requests counts once)
        self._thread = threading.Thread(target=self._loop, name="ulmfit-model", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def _submit(self, job: _Job) -> Future:
        with self._cv:
            if self._closed:
                raise Busy("the server is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise Busy(f"{len(self._jobs)} requests are waiting for the model")
            self._jobs.append(job)
            self._cv.notify()
        return job.future

    def predict(self, texts: list[str]) -> Future:
        return self._submit(_Job(Future(), texts=list(texts)))

    def call(self, fn) -> Future:
        return self._submit(_Job(Future(), call=fn))

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    def _next(self) -> list[_Job] | None:
        with self._cv:
            while not self._jobs and not self._closed:
                self._cv.wait()
            if not self._jobs:
                return None
            batch = [self._jobs.popleft()]
            if batch[0].texts is not None:
                n = len(batch[0].texts)
                while self._jobs and self._jobs[0].texts is not None:
                    if n + len(self._jobs[0].texts) > self.max_batch_texts:
                        break
                    n += len(self._jobs[0].texts)
                    batch.append(self._jobs.popleft())
            return batch

    def _loop(self) -> None:
        while (batch := self._next()) is not None:
            # a request whose client went away was cancelled: not predicted
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                self.calls += 1
                if batch[0].texts is None:
                    batch[0].future.set_result(batch[0].call())
                    continue
                texts = [t for j in batch for t in j.texts]
                preds = self.predictor.predict(texts, progress=False)
                start = 0
                for j in batch:
                    j.future.set_result(preds[start : start + len(j.texts)])
                    start += len(j.texts)
            except BaseException as e:  # every waiting request gets the error, not a hang
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(e)


def _error(status: int, message: str, code: str, **extra):
    from fastapi.responses import JSONResponse

    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message, "code": code, **extra}, status, headers=headers)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before the app
    reads it, from its Content-Length or, without one, by counting the bytes received."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, scope, receive, send, status: int, message: str, code: str) -> None:
        response = _error(status, message, code, limit=self.max_bytes)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = f"the request body is over {self.max_bytes:,} bytes"
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await self._refuse(scope, receive, send, 400, "bad Content-Length", "bad_length")
                return
            if declared > self.max_bytes:
                await self._refuse(scope, receive, send, 413, too_big, "body_too_large")
                return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send, 413, too_big, "body_too_large")
                return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def page_html() -> str:
    """The page served at ``/`` (``ulmfit/static/index.html``, shipped with the package)."""
    from importlib.resources import files

    return (files("ulmfit") / "static" / "index.html").read_text(encoding="utf-8")


def _json_body(raw: bytes) -> tuple[object, object]:
    """``(value, None)`` or ``(None, error response)`` for a request body."""
    try:
        return json.loads(raw.decode("utf-8")), None
    except (UnicodeDecodeError, ValueError) as e:
        return None, _error(422, f"malformed JSON: {e}", "malformed_json")


def _check_text(text: object, limits: ServeLimits, where: str):
    """An error response when ``text`` is not a string or is too long, else None."""
    if not isinstance(text, str):
        return _error(422, f"{where} must be a string, got {type(text).__name__}", "not_a_string")
    if len(text) > limits.max_chars:
        return _error(
            413,
            f"{where} has {len(text):,} characters; at most {limits.max_chars:,} are allowed",
            "text_too_long",
            limit=limits.max_chars,
        )
    return None


def create_app(predictor, limits: ServeLimits | None = None):
    """The FastAPI app serving ``predictor``. Its model worker thread is ``app.state.worker``;
    it stops when the app shuts down (``app.state.worker.close()`` stops it otherwise)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    limits = limits or ServeLimits()
    limits.check()
    worker = ModelWorker(predictor, limits.max_batch_texts, limits.max_queue)
    page = page_html()
    info = {**predictor.info(), "model": Path(predictor.path).name}

    @asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()

    app = FastAPI(
        title="ulmfit classifier",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.worker = worker
    app.state.limits = limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), f"http_{exc.status_code}")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _error(
            422,
            "invalid request",
            "invalid",
            details=json.loads(json.dumps(exc.errors(), default=str)),
        )

    async def answer(submit):
        """The worker's answer, or the error response saying why there is none."""
        try:
            return await asyncio.wrap_future(submit()), None
        except Busy as e:
            return None, _error(503, f"busy: {e}; try again", "busy")
        except UserError as e:
            return None, _error(422, str(e), "bad_input")
        except Exception as e:  # noqa: BLE001 - one request's failure is not the server's
            return None, _error(500, f"the model failed: {type(e).__name__}: {e}", "internal")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {"status": "ok", **info, "limits": asdict(limits), "waiting": worker.pending}

    @app.post("/predict")
    async def predict(request: Request):
        data, err = _json_body(await request.body())
        if err is not None:
            return err
        if not isinstance(data, dict) or not isinstance(data.get("texts"), list):
            return _error(422, 'expected a JSON object {"texts": ["...", ...]}', "bad_shape")
        texts = data["texts"]
        if len(texts) > limits.max_texts:
            return _error(
                413,
                f"{len(texts)} texts; at most {limits.max_texts} per request",
                "too_many_texts",
                limit=limits.max_texts,
            )
        for i, t in enumerate(texts):
            err = _check_text(t, limits, f"texts[{i}]")
            if err is not None:
                return err
        if not texts:
            return {"predictions": []}
        preds, err = await answer(lambda: worker.predict(texts))
        return err if err is not None else JSONResponse({"predictions": preds})

    @app.post("/explain")
    async def explain(request: Request):
        data, err = _json_body(await request.body())
        if err is not None:
            return err
        if not isinstance(data, dict) or "text" not in data:
            return _error(422, 'expected a JSON object {"text": "..."}', "bad_shape")
        err = _check_text(data["text"], limits, "text")
        if err is not None:
            return err
        target = data.get("target")
        if target is not None and not isinstance(target, str):
            return _error(422, "target must be a class name (a string)", "not_a_string")
        text = data["text"]
        exp, err = await answer(lambda: worker.call(lambda: predictor.explain(text, target)))
        return err if err is not None else JSONResponse(exp)

    return app


def run(
    model: Path | str,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits | None = None,
    *,
    device: str | None = None,
    log_level: str = "info",
    threads: int | None = None,
) -> None:
    """Load ``model`` and serve it until interrupted. ``threads``: torch's intra-op threads
    (default: torch's choice, every core; fewer leave cores to the event loop and to other
    processes, e.g. a load generator on the same machine)."""
    import sys

    import torch
    import uvicorn

    from ulmfit.predict import Predictor

    limits = limits or ServeLimits()
    limits.check()
    # oneDNN keeps a compiled LSTM per input shape (1,024 by default, hundreds of MB): a server
    # meets many shapes, and a small cache costs no measurable speed
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE))
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be 1 or more, got {threads}")
        torch.set_num_threads(threads)
    predictor = Predictor.load(model, device=device)
    app = create_app(predictor, limits)
    print(f"serving {model} on http://{host}:{port}/  (Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["BodyLimit", "ModelWorker", "ServeLimits", "create_app", "page_html", "run"]
