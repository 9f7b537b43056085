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
more than ``max_texts`` texts, a text over ``max_chars`` characters (``max_explain_chars`` for
/explain): 413 naming the limit; malformed JSON (nesting too deep included), a body of the
wrong shape or a text with a lone surrogate: 422; a body that is not ``application/json``:
415; a Host header not in the allowed hosts: 400. A client has ``read_timeout_s`` seconds to
send a request's head, and as long again for its body (408), so slow clients cannot hold
connections. A Predictor is not thread-safe, so one worker thread makes every model call
(:class:`ModelWorker`): requests queue for it (503 past ``max_queue`` waiting requests) and
take turns; each call gathers the next texts of the waiting requests, up to
``max_batch_texts`` texts and ``max_batch_chars`` characters (micro-batching: under load, many
small requests become few length-sorted batches, and a large request is cut into slices that
other requests join instead of holding the model for its whole length).
"""

# no "from __future__ import annotations": FastAPI reads the handlers' annotations (Request)
import asyncio
import json
import os
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ulmfit.config import ServeLimits, ServeSettings
from ulmfit.errors import UserError

ONEDNN_CACHE = 32  # oneDNN primitives kept by a server (see run)


def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere). glibc keeps the memory a large call freed in
    its arenas, one per thread, so a server's RSS stays at its highest point; trimming hands
    the free pages back to the system."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


TRIM_AFTER_S = 1.0  # a model call this long freed enough memory to trim after (a trim: ms)


class Busy(Exception):
    """The queue of requests waiting for the model is full, or the server is stopping."""


@dataclass
class _Job:
    future: Future
    texts: list[str] | None = None  # a predict job
    call: object = None  # any other model call (explain): a function of no arguments
    done: int = 0  # texts of a predict job already predicted
    results: list = field(default_factory=list)


class ModelWorker:
    """One thread that makes every model call. Requests with work left take turns (round
    robin): a model call gathers the next texts of the predict requests at the front of the
    turn order, up to ``max_batch_texts`` texts and ``max_batch_chars`` characters (always at
    least one text; see :meth:`_shares`), and those with texts left go to the back once the
    call is over, behind the requests that arrived during it; an explain (any other call)
    takes a turn of its own. So small requests waiting together become one call
    (micro-batching), a request of 64 long texts is cut into slices, and a short request
    waits for about one turn of each request ahead of it (a turn: at most
    ``max_batch_chars`` characters, or one text, of model time) instead of for whole
    requests."""

    def __init__(
        self,
        predictor,
        max_batch_texts: int = ServeLimits.max_batch_texts,
        max_queue: int = ServeLimits.max_queue,
        max_batch_chars: int = ServeLimits.max_batch_chars,
    ) -> None:
        self.predictor = predictor
        self.max_batch_texts, self.max_queue = max_batch_texts, max_queue
        self.max_batch_chars = max_batch_chars
        self._jobs: deque[_Job] = deque()  # requests with work left, in turn order
        self._cv = threading.Condition()
        self._closed = False
        self.calls = 0  # model calls made (a batch of merged requests counts once)
        self._trim = _malloc_trim()
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
        """Stops the thread after the call it is making; the requests still waiting get
        Busy instead of the remaining turns of a large request keeping the server up."""
        with self._cv:
            self._closed = True
            waiting, self._jobs = list(self._jobs), deque()
            self._cv.notify()
        for job in waiting:
            if job.future.running() or job.future.set_running_or_notify_cancel():
                job.future.set_exception(Busy("the server is shutting down"))
        self._thread.join(timeout)

    @staticmethod
    def _claim(job: _Job) -> bool:
        """Marks ``job`` running at its first model call; False for a request whose client
        went away before it (cancelled: not predicted)."""
        return job.future.running() or job.future.set_running_or_notify_cancel()

    def _shares(self, jobs: list[_Job]) -> list[int]:
        """How many of their next texts each predict job, in turn order, gives the next call:
        as many as fit in the call's budget of texts and characters (the first text always
        fits), so small requests go whole and a large one gives a slice. A text longer than
        ``max(4 x the first text, 2,000)`` characters waits for a call of its own kind: a
        call lasts as long as its longest text, so short texts do not wait inside a call of
        long ones."""
        shares = []
        n = chars = longest = 0
        for job in jobs:
            k = job.done
            while k < len(job.texts):
                size = len(job.texts[k])
                if n and (
                    n >= self.max_batch_texts
                    or chars + size > self.max_batch_chars
                    or size > longest
                ):
                    break
                longest = longest or max(4 * size, 2_000)  # set by the first text
                k, n, chars = k + 1, n + 1, chars + size
            shares.append(k - job.done)
        return shares

    def _take(self) -> list[tuple[_Job, int]]:
        """The next call's parts, taken out of the turn order (the caller holds the lock);
        :meth:`_requeue` puts back those with texts left once the call is over, behind the
        requests that arrived meanwhile."""
        self._jobs = deque(j for j in self._jobs if not j.future.cancelled())
        if not self._jobs:
            return []
        if self._jobs[0].texts is None:
            job = self._jobs.popleft()
            return [(job, 0)] if self._claim(job) else []
        head = []
        for job in self._jobs:
            if job.texts is None:
                break
            head.append(job)
        parts = [(j, k) for j, k in zip(head, self._shares(head)) if k and self._claim(j)]
        taking = {id(j) for j, _ in parts}
        self._jobs = deque(j for j in self._jobs if id(j) not in taking)
        return parts

    def _requeue(self, parts: list[tuple[_Job, int]]) -> None:
        """After a call: its requests with texts left go to the back of the turn order (or,
        once closed, get Busy)."""
        left = [j for j, _ in parts if j.texts is not None and not j.future.done()]
        with self._cv:
            if not self._closed:
                self._jobs.extend(left)
                return
        for j in left:
            j.future.set_exception(Busy("the server is shutting down"))

    def _next(self) -> list[tuple[_Job, int]] | None:
        """The next model call: ``[(explain job, 0)]`` or ``[(predict job, texts), ...]``;
        None once closed with nothing left."""
        with self._cv:
            while True:
                while not self._jobs and not self._closed:
                    self._cv.wait()
                if not self._jobs:
                    return None
                parts = self._take()
                if parts:
                    return parts

    def _run(self, parts: list[tuple[_Job, int]]) -> None:
        job = parts[0][0]
        if job.texts is None:
            job.future.set_result(job.call())
            return
        texts = [t for j, k in parts for t in j.texts[j.done : j.done + k]]
        preds = self.predictor.predict(texts, progress=False)
        start = 0
        for j, k in parts:
            j.results += preds[start : start + k]
            j.done += k
            start += k
            if j.done == len(j.texts):
                j.future.set_result(j.results)

    def _loop(self) -> None:
        while (parts := self._next()) is not None:
            self.calls += 1
            start = time.monotonic()
            try:
                self._run(parts)
            except BaseException as e:  # noqa: BLE001 - the requests get it; the loop goes on
                for j, _ in parts:
                    if not j.future.done():
                        j.future.set_exception(e)
            self._requeue(parts)
            if self._trim is not None and time.monotonic() - start >= TRIM_AFTER_S:
                self._trim(0)  # a long call had large buffers: give them back


def _error(status: int, message: str, code: str, **extra):
    from fastapi.responses import JSONResponse

    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message, "code": code, **extra}, status, headers=headers)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before the app
    reads it, from its Content-Length or, without one, by counting the bytes received; a
    body that has not arrived whole ``timeout`` seconds after the request's head is answered
    408 (a client sending a byte a second would otherwise hold its connection for ever)."""

    def __init__(self, app, max_bytes: int, timeout: float = 30.0) -> None:
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def _refuse(self, scope, receive, send, status: int, message: str, code: str) -> None:
        extra = {"limit": self.max_bytes} if status == 413 else {}
        response = _error(status, message, code, **extra)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)

    def _too_long(self, headers: dict) -> tuple[int, str, str] | None:
        """The refusal a declared Content-Length earns, if any."""
        length = headers.get(b"content-length")
        if length is None:
            return None
        try:
            declared = int(length)
        except ValueError:
            return 400, "bad Content-Length", "bad_length"
        if declared > self.max_bytes:
            return 413, f"the request body is over {self.max_bytes:,} bytes", "body_too_large"
        return None

    async def _read(self, receive) -> bytes | tuple[int, str, str] | None:
        """The whole body, a refusal ``(status, message, code)``, or None (client gone)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        body = bytearray()
        more = True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                late = f"the request body did not arrive within {self.timeout:g} s"
                return 408, late, "body_timeout"
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return 413, f"the request body is over {self.max_bytes:,} bytes", "body_too_large"
        return bytes(body)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._too_long(dict(scope.get("headers") or []))
        body = await self._read(receive) if refusal is None else refusal
        if body is None:
            return
        if isinstance(body, tuple):
            await self._refuse(scope, receive, send, *body)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def _host_name(header: str) -> str:
    """The host of a Host header, without its port (``[::1]:8000`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware: a request whose Host header is not one of ``allowed`` (names, or
    ``*.example.com`` / ``*``) is refused with 400 and a JSON body. Without it a page on any
    site could reach a server on localhost through a name that resolves there (DNS
    rebinding), and redirects would point wherever the Host header says. Starlette's
    TrustedHostMiddleware does the same check but answers in plain text."""

    def __init__(self, app, allowed: list[str]) -> None:
        self.app = app
        self.allowed = [h.strip().lower() for h in allowed if h.strip()]

    def accepts(self, host: str) -> bool:
        for pattern in self.allowed:
            if pattern == "*" or host == pattern:
                return True
            if pattern.startswith("*.") and host.endswith(pattern[1:]):
                return True
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or []).get(b"host", b"")
        host = _host_name(raw.decode("latin-1"))
        if self.accepts(host):
            await self.app(scope, receive, send)
            return
        msg = f"host {host!r} is not served here (see --allowed-hosts)" if host else "no Host"
        response = _error(400, msg, "bad_host", allowed=self.allowed)
        await response(scope, receive, send)


def page_html() -> str:
    """The page served at ``/`` (``ulmfit/static/index.html``, shipped with the package)."""
    from importlib.resources import files

    return (files("ulmfit") / "static" / "index.html").read_text(encoding="utf-8")


async def _json_body(request) -> tuple[object, object]:
    """``(value, None)`` or ``(None, error response)`` for a request body. Only
    ``application/json`` is read: a page on another site can POST ``text/plain`` to any
    server without asking (no CORS preflight), but not ``application/json``."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        got = f"got {media!r}" if media else "none given"
        return None, _error(415, f"the body must be application/json ({got})", "not_json")
    try:
        return json.loads((await request.body()).decode("utf-8")), None
    except (UnicodeDecodeError, ValueError) as e:
        return None, _error(422, f"malformed JSON: {e}", "malformed_json")
    except RecursionError:  # json's parser recurses once per [ or {
        return None, _error(422, "malformed JSON: nested too deeply", "malformed_json")


def _check_text(text: object, max_chars: int, where: str):
    """An error response when ``text`` is not a string, is too long or is not Unicode that
    can be written out (JSON's ``"\\ud800"`` escapes decode to a lone surrogate), else None."""
    if not isinstance(text, str):
        return _error(422, f"{where} must be a string, got {type(text).__name__}", "not_a_string")
    if len(text) > max_chars:
        return _error(
            413,
            f"{where} has {len(text):,} characters; at most {max_chars:,} are allowed",
            "text_too_long",
            limit=max_chars,
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return _error(
            422,
            f"{where} has a lone surrogate (\\u{ord(text[e.start]):x}) at {e.start}",
            "bad_text",
        )
    return None


def _add_error_handlers(app) -> None:
    """Every error answer is a JSON body ``{"error", "code", ...}``: HTTP errors, invalid
    requests and, should a handler fail, the 500 (the exception is still logged)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

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

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        return _error(500, f"internal error: {type(exc).__name__}", "internal")


async def _answer(submit):
    """The worker's answer, or the error response saying why there is none."""
    try:
        return await asyncio.wrap_future(submit()), None
    except Busy as e:
        return None, _error(503, f"busy: {e}; try again", "busy")
    except UserError as e:
        return None, _error(422, str(e), "bad_input")
    except Exception as e:  # noqa: BLE001 - one request's failure is not the server's
        return None, _error(500, f"the model failed: {type(e).__name__}: {e}", "internal")


def _predict_texts(data: object, limits: ServeLimits):
    """``(texts, None)`` from a /predict body, or ``(None, error response)``."""
    if not isinstance(data, dict) or not isinstance(data.get("texts"), list):
        return None, _error(422, 'expected a JSON object {"texts": ["...", ...]}', "bad_shape")
    texts = data["texts"]
    if len(texts) > limits.max_texts:
        return None, _error(
            413,
            f"{len(texts)} texts; at most {limits.max_texts} per request",
            "too_many_texts",
            limit=limits.max_texts,
        )
    for i, t in enumerate(texts):
        err = _check_text(t, limits.max_chars, f"texts[{i}]")
        if err is not None:
            return None, err
    return texts, None


def create_app(predictor, limits: ServeLimits | None = None, allowed_hosts=LOCAL_HOSTS):
    """The FastAPI app serving ``predictor`` to requests whose Host is one of
    ``allowed_hosts`` (see :class:`HostCheck`). Its model worker thread is
    ``app.state.worker``; it stops when the app shuts down (``app.state.worker.close()``
    stops it otherwise)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    limits = limits or ServeLimits()
    limits.check()
    worker = ModelWorker(
        predictor, limits.max_batch_texts, limits.max_queue, limits.max_batch_chars
    )
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
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout=limits.read_timeout_s)
    app.add_middleware(HostCheck, allowed=list(allowed_hosts))  # the outermost: runs first
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {"status": "ok", **info, "limits": asdict(limits), "waiting": worker.pending}

    @app.post("/predict")
    async def predict(request: Request):
        data, err = await _json_body(request)
        texts, err = (None, err) if err is not None else _predict_texts(data, limits)
        if err is not None:
            return err
        if not texts:
            return {"predictions": []}
        preds, err = await _answer(lambda: worker.predict(texts))
        return err if err is not None else JSONResponse({"predictions": preds})

    @app.post("/explain")
    async def explain(request: Request):
        data, err = await _json_body(request)
        if err is not None:
            return err
        if not isinstance(data, dict) or "text" not in data:
            return _error(422, 'expected a JSON object {"text": "..."}', "bad_shape")
        most = min(limits.max_chars, limits.max_explain_chars)
        err = _check_text(data["text"], most, "text")
        if err is not None:
            return err
        target = data.get("target")
        if target is not None and not isinstance(target, str):
            return _error(422, "target must be a class name (a string)", "not_a_string")
        text = data["text"]
        exp, err = await _answer(lambda: worker.call(lambda: predictor.explain(text, target)))
        return err if err is not None else JSONResponse(exp)

    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, bound before the server says it is serving: a
    port out of range, taken or not allowed, or a host that is not this machine's, is a
    UserError (uvicorn binds only once started, after the banner)."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be 0 to 65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as e:  # gaierror included
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def default_hosts(host: str) -> list[str]:
    """The Host headers served by default: the bound address and localhost's names (a
    wildcard address such as 0.0.0.0 is no name: give the names with --allowed-hosts)."""
    named = [] if host in ("0.0.0.0", "::", "") else [host]
    return list(dict.fromkeys([*named, *LOCAL_HOSTS]))


def make_server(app, limits: ServeLimits, log_level: str = ServeSettings.log_level):
    """The uvicorn server for ``app``: h11 with a deadline on request heads
    (:mod:`ulmfit.http_timeouts`, ``limits.read_timeout_s``) and uvicorn's keep-alive
    timeout for idle connections; on shutdown, requests still running get 10 s.
    ``server.run(sockets=[listen(...)])`` serves."""
    from functools import partial

    import uvicorn

    from ulmfit.http_timeouts import ReadTimeoutH11Protocol

    protocol = partial(ReadTimeoutH11Protocol, read_timeout=limits.read_timeout_s)
    config = uvicorn.Config(
        app, http=protocol, log_level=log_level, timeout_keep_alive=5, timeout_graceful_shutdown=10
    )
    return uvicorn.Server(config)


def run(
    model: Path | str,
    host: str = ServeSettings.host,
    port: int = ServeSettings.port,
    limits: ServeLimits | None = None,
    *,
    device: str | None = None,
    amp: str = "auto",
    log_level: str = ServeSettings.log_level,
    threads: int | None = None,
    allowed_hosts: list[str] | None = None,
) -> None:
    """Load ``model`` and serve it until interrupted. ``threads``: torch's intra-op threads
    (default: torch's choice, every core; fewer leave cores to the event loop and to other
    processes, e.g. a load generator on the same machine). ``allowed_hosts``: the Host
    headers answered (default :func:`default_hosts`)."""
    import sys

    import torch

    from ulmfit.precision import describe
    from ulmfit.predict import Predictor

    limits = limits or ServeLimits()
    limits.check()
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be 1 or more, got {threads}")
    sock = listen(host, port)
    try:
        # oneDNN keeps a compiled LSTM per input shape (1,024 by default, hundreds of MB): a
        # server meets many shapes, and a small cache costs no measurable speed
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE))
        if threads is not None:
            torch.set_num_threads(threads)
        predictor = Predictor.load(model, device=device, amp=amp)
        app = create_app(predictor, limits, allowed_hosts or default_hosts(host))
        bound = sock.getsockname()[1]
        where = f"http://{host}:{bound}/" if ":" not in host else f"http://[{host}]:{bound}/"
        print(
            f"serving {model} on {where} in {describe(predictor.precision.record())}  "
            "(Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
        make_server(app, limits, log_level).run(sockets=[sock])
    finally:
        sock.close()


__all__ = [
    "BodyLimit",
    "HostCheck",
    "ModelWorker",
    "ServeLimits",
    "create_app",
    "default_hosts",
    "listen",
    "make_server",
    "page_html",
    "run",
]
