"""`ulmfit serve`: the HTTP API through an in-process client (limits, malformed JSON,
hosts, media types, concurrent requests), the model worker that serialises, batches and
shares model calls fairly, and a real uvicorn server on loopback (slow clients, ports)."""

import json
import socket
import threading
import time
from dataclasses import asdict, replace

import pytest
from fastapi.testclient import TestClient
from test_predict import tiny_models

import ulmfit
from ulmfit.config import ServeLimits
from ulmfit.errors import UserError
from ulmfit.serve import Busy, ModelWorker, create_app, listen, make_server

SMALL = ServeLimits(max_texts=4, max_chars=200, max_body_bytes=2_000)
JSON = {"content-type": "application/json"}
LOCAL = "http://localhost"  # TestClient's own default host, testserver, is not allowed


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return ulmfit.load(tiny_models(tmp_path_factory)["ensemble"], device="cpu")


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, SMALL), base_url=LOCAL) as c:
        yield c


def _is_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["code"] == code and body["error"]
    return body


def test_health_and_page(client, predictor):
    r = client.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["classes"] == predictor.classes
    assert h["label_kind"] == "single" and h["members"] == ["fwd", "bwd"]
    assert h["limits"] == asdict(SMALL)
    assert h["precision"] == predictor.precision.record()  # what the model runs in, and why
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<textarea id="text"' in page.text and 'id="go"' in page.text


def test_predict_answers_in_order(client, predictor):
    texts = ["Who wrote Hamlet ?", "What is a " + "very " * 30 + "long word ?", "How far ?", "x"]
    r = client.post("/predict", json={"texts": texts})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    want = predictor.predict(texts)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want):
        assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-6)
    assert client.post("/predict", json={"texts": []}).json() == {"predictions": []}


def test_limits(client):
    body = _is_error(client.post("/predict", json={"texts": ["a"] * 5}), 413, "too_many_texts")
    assert body["limit"] == 4
    body = _is_error(
        client.post("/predict", json={"texts": ["a", "b" * 201]}), 413, "text_too_long"
    )
    assert body["limit"] == 200 and "texts[1]" in body["error"]
    _is_error(client.post("/explain", json={"text": "b" * 201}), 413, "text_too_long")
    # the body limit, from Content-Length and, without one, from the bytes received
    big = b'{"texts": ["' + b"a" * 3_000 + b'"]}'
    body = _is_error(client.post("/predict", content=big), 413, "body_too_large")
    assert body["limit"] == 2_000

    def chunks():
        for _ in range(30):
            yield b"a" * 100

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    _is_error(r, 413, "body_too_large")
    # a small streamed body is read whole and answered
    r = client.post("/predict", content=iter([b'{"texts": ', b'["Who ?"]}']), headers=JSON)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def test_explain_has_its_own_text_limit(predictor):
    limits = replace(SMALL, max_explain_chars=50)
    with TestClient(create_app(predictor, limits), base_url=LOCAL) as c:
        body = _is_error(c.post("/explain", json={"text": "b " * 26}), 413, "text_too_long")
        assert body["limit"] == 50
        assert c.post("/explain", json={"text": "b " * 25}).status_code == 200
        assert c.post("/predict", json={"texts": ["b " * 26]}).status_code == 200


def test_malformed_requests(client):
    for raw in (b"{not json", b"", b'{"texts": ["a"]', b"\xff\xfe"):
        _is_error(client.post("/predict", content=raw, headers=JSON), 422, "malformed_json")
    _is_error(client.post("/explain", content=b"[1, 2", headers=JSON), 422, "malformed_json")
    for data in ([], {"text": ["a"]}, {"texts": "a"}, {"texts": None}, 3):
        _is_error(client.post("/predict", json=data), 422, "bad_shape")
    body = _is_error(client.post("/predict", json={"texts": ["a", 2]}), 422, "not_a_string")
    assert "texts[1]" in body["error"]
    _is_error(client.post("/explain", json={"txt": "a"}), 422, "bad_shape")
    _is_error(client.post("/explain", json={"text": "a", "target": "zzz"}), 422, "bad_input")
    _is_error(client.get("/nowhere"), 404, "http_404")
    _is_error(client.get("/predict"), 405, "http_405")


def test_explain_endpoint(client, predictor):
    text = "Who invented <b>the</b> telephone ?"
    r = client.post("/explain", json={"text": text})
    assert r.status_code == 200, r.text
    exp = r.json()
    assert exp["prediction"]["label"] == predictor.predict([text])[0]["label"] == exp["target"]
    assert "".join(s["text"] for s in exp["segments"]) == text
    assert max(exp["weights"]) == 1.0
    other = predictor.classes[-1]
    assert client.post("/explain", json={"text": text, "target": other}).json()["target"] == other


def test_concurrent_requests_all_answered(client, predictor):
    texts = [f"What is the number {k} ?" for k in range(24)]
    want = {t: p["label"] for t, p in zip(texts, predictor.predict(texts))}
    results, errors = {}, []

    def one(k):
        batch = texts[k : k + 3]
        r = client.post("/predict", json={"texts": batch})
        if r.status_code != 200:
            errors.append(r.text)
            return
        results[k] = (batch, [p["label"] for p in r.json()["predictions"]])

    threads = [threading.Thread(target=one, args=(k,)) for k in range(0, 24, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    for batch, labels in results.values():
        assert labels == [want[t] for t in batch]


class _SlowEcho:
    """A stand-in model: answers each text with itself, slowly, and records overlaps."""

    def __init__(self, fail_on: str | None = None):
        self.active = self.most_active = 0
        self.sizes = []
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()
        self.path, self.kind = "echo", "single"

    def info(self):
        return {"model": "echo", "label_kind": "single", "classes": ["a"], "members": ["fwd"]}

    def predict(self, texts, progress=None):
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        self.gate.wait(5)
        time.sleep(0.02)
        self.sizes.append(len(texts))
        self.active -= 1
        if self.fail_on in texts:
            raise RuntimeError("boom")
        return [{"label": t} for t in texts]


def test_worker_serialises_and_batches_model_calls():
    echo = _SlowEcho()
    echo.gate.clear()  # hold the first call so that the others queue behind it
    worker = ModelWorker(echo, max_batch_texts=10, max_queue=100)
    try:
        futures = [worker.predict([f"{k}a", f"{k}b"]) for k in range(12)]
        time.sleep(0.05)
        echo.gate.set()
        for k, f in enumerate(futures):
            assert [p["label"] for p in f.result(5)] == [f"{k}a", f"{k}b"]
        assert echo.most_active == 1  # never two model calls at once
        assert max(echo.sizes) == 10 and worker.calls < 12  # queued requests were merged
    finally:
        worker.close()


def test_worker_queue_limit_and_errors():
    echo = _SlowEcho(fail_on="bad")
    echo.gate.clear()
    worker = ModelWorker(echo, max_batch_texts=1, max_queue=1)
    try:
        first = worker.predict(["x"])
        time.sleep(0.05)  # the worker has taken it and waits at the gate
        second = worker.predict(["bad"])
        with pytest.raises(Busy):
            worker.predict(["y"])
        echo.gate.set()
        assert first.result(5) == [{"label": "x"}]
        with pytest.raises(RuntimeError, match="boom"):
            second.result(5)
        assert worker.predict(["z"]).result(5) == [{"label": "z"}]  # still serving
    finally:
        worker.close()


def test_model_failure_is_a_json_500():
    with TestClient(create_app(_SlowEcho(fail_on="bad"), SMALL), base_url=LOCAL) as c:
        _is_error(c.post("/predict", json={"texts": ["bad"]}), 500, "internal")
        assert c.post("/predict", json={"texts": ["ok"]}).json() == {"predictions": [{"label": "ok"}]}  # fmt: skip


def test_limits_are_checked():
    with pytest.raises(UserError, match="max_texts"):
        ServeLimits(max_texts=0).check()


def _capture_server(monkeypatch) -> dict:
    """Make ``uvicorn.Server.run`` record its server and sockets instead of serving."""
    import uvicorn

    seen = {}

    def fake_run(self, sockets=None):
        names = [s.getsockname() for s in sockets]  # run() closes them when this returns
        seen.update(server=self, app=self.config.app, names=names)

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    return seen


def test_serve_command_passes_its_settings(tmp_path_factory, monkeypatch, capsys):
    from ulmfit.cli import main

    seen = _capture_server(monkeypatch)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024")  # run() sets a default only
    model = str(tiny_models(tmp_path_factory)["single"])
    argv = ["serve", model, "--port", "0", "--max-texts", "5", "--device", "cpu"]
    assert main([*argv, "--read-timeout", "7", "--allowed-hosts", "a.example,*.b.example"]) == 0
    try:
        (host, port), *more = seen["names"]
        assert host == "127.0.0.1" and port > 0 and not more
        assert seen["app"].state.limits == ServeLimits(max_texts=5, read_timeout_s=7)
        assert seen["server"].config.http.keywords == {"read_timeout": 7}
        assert f"serving {model} on http://127.0.0.1:{port}/" in capsys.readouterr().err
        with TestClient(seen["app"], base_url="http://x.b.example") as c:
            assert c.get("/health").status_code == 200
            _is_error(c.get("/health", headers={"host": "localhost"}), 400, "bad_host")
    finally:
        seen["app"].state.worker.close()
    assert main(["serve", model, "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
    assert main(["serve", model, "--max-chars", "0"]) == 2


def test_serve_port_out_of_range_or_taken_is_one_error_line(tmp_path_factory, monkeypatch, capsys):
    from ulmfit.cli import main

    seen = _capture_server(monkeypatch)
    model = str(tiny_models(tmp_path_factory)["single"])
    for port in ("99999", "-1"):
        assert main(["serve", model, "--port", port]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ulmfit: error: --port must be 0 to 65535") and err.count("\n") == 1
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        assert main(["serve", model, "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ulmfit: error: cannot listen on 127.0.0.1:{port}")
    assert "serving" not in err and err.count("\n") == 1
    assert main(["serve", model, "--host", "no-such-host.invalid", "--port", "0"]) == 2
    assert capsys.readouterr().err.startswith("ulmfit: error: cannot listen on no-such-host")
    assert not seen  # no server was started


def test_deep_json_and_lone_surrogates_are_4xx_json(predictor):
    limits = replace(SMALL, max_body_bytes=200_000)
    with TestClient(create_app(predictor, limits), base_url=LOCAL) as c:
        deep = b'{"texts": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        body = _is_error(c.post("/predict", content=deep, headers=JSON), 422, "malformed_json")
        assert "deep" in body["error"]
        _is_error(c.post("/explain", content=b"{" * 60_000, headers=JSON), 422, "malformed_json")
        lone = b'{"texts": ["ok", "a\\ud800"]}'  # valid JSON: an escape of a lone surrogate
        body = _is_error(c.post("/predict", content=lone, headers=JSON), 422, "bad_text")
        assert "texts[1]" in body["error"] and "ud800" in body["error"]
        lone = b'{"text": "\\udfff b"}'
        _is_error(c.post("/explain", content=lone, headers=JSON), 422, "bad_text")
        pair = b'{"texts": ["\\ud83d\\ude00 ok"]}'  # a surrogate pair is one character
        assert c.post("/predict", content=pair, headers=JSON).status_code == 200


def test_unexpected_failure_is_a_json_500():
    class Unwritable(_SlowEcho):
        def predict(self, texts, progress=None):
            return [{"label": {1, 2}} for _ in texts]  # JSONResponse cannot write a set

    app = create_app(Unwritable(), SMALL)
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as c:
        _is_error(c.post("/predict", json={"texts": ["a"]}), 500, "internal")


def test_only_json_bodies_are_read(client):
    ok = json.dumps({"texts": ["Who ?"]})
    for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        r = client.post("/predict", content=ok, headers={"content-type": media})
        body = _is_error(r, 415, "not_json")
        assert media in body["error"]
    _is_error(client.post("/explain", content=b'{"text": "a"}'), 415, "not_json")
    r = client.post("/predict", content=ok, headers={"content-type": "Application/JSON; charset=utf-8"})  # fmt: skip
    assert r.status_code == 200


def test_only_allowed_hosts_are_answered(predictor):
    with TestClient(create_app(predictor, SMALL), base_url=LOCAL) as c:
        for host in ("localhost", "localhost:8000", "127.0.0.1:80", "[::1]:8000", "LOCALHOST"):
            assert c.get("/health", headers={"host": host}).status_code == 200, host
        for host in ("evil.example.com", "evil.example.com:8000", "localhost.evil.example", ""):
            body = _is_error(c.get("/health", headers={"host": host}), 400, "bad_host")
            assert body["allowed"] == ["localhost", "127.0.0.1", "::1"]
        # the redirect to /health no longer points at whatever host the client named
        r = c.get("/health/", headers={"host": "evil.example.com"}, follow_redirects=False)
        _is_error(r, 400, "bad_host")
        post = c.post("/predict", json={"texts": ["a"]}, headers={"host": "evil.example.com"})
        _is_error(post, 400, "bad_host")
    with TestClient(create_app(predictor, SMALL, ["*.example.com"]), base_url=LOCAL) as c:
        assert c.get("/health", headers={"host": "api.example.com"}).status_code == 200
        _is_error(c.get("/health", headers={"host": "example.com"}), 400, "bad_host")
        _is_error(c.get("/health"), 400, "bad_host")


class _Gated:
    """A stand-in model: every call waits for a permit, then answers each text with itself
    and records the texts it was given."""

    path, kind = "gated", "single"

    def __init__(self):
        self.permits = threading.Semaphore(0)
        self.calls = []
        self.entered = threading.Event()  # a call has begun

    def info(self):
        return {"model": "gated", "label_kind": "single", "classes": ["a"], "members": ["fwd"]}

    def predict(self, texts, progress=None):
        self.entered.set()
        assert self.permits.acquire(timeout=60), "the test gave no permit"
        self.calls.append(list(texts))
        return [{"label": t} for t in texts]

    def explain(self, text, target=None):
        return {"explained": text}


def test_worker_shares_the_model_between_a_large_and_a_short_request():
    model = _Gated()
    worker = ModelWorker(model, max_batch_texts=256, max_queue=10, max_batch_chars=10)
    try:
        big_texts = [f"big{k:02d}" for k in range(20)]  # 5 characters: 2 per call
        big = worker.predict(big_texts)
        gone = worker.predict(["gone"])
        short = worker.predict(["s"])
        explained = worker.call(lambda: "explained")
        assert gone.cancel()  # its client went away while it waited: never predicted
        for _ in range(3):
            model.permits.release()
        assert short.result(60) == [{"label": "s"}]
        assert explained.result(60) == "explained"
        assert not big.done()  # the short request did not wait for the whole large one
        for _ in range(20):
            model.permits.release()
        assert [p["label"] for p in big.result(60)] == big_texts
        assert all(sum(map(len, c)) <= 10 for c in model.calls)
        assert [t for c in model.calls for t in c if t.startswith("big")] == big_texts
        assert any("s" in c for c in model.calls[:2]) and "gone" not in sum(model.calls, [])
    finally:
        for _ in range(20):
            model.permits.release()
        worker.close()


def test_short_texts_are_not_held_in_a_call_of_long_ones():
    model = _Gated()
    worker = ModelWorker(model, max_batch_texts=256, max_queue=10, max_batch_chars=100_000)
    try:
        first = worker.predict(["first"])
        while not first.running():  # the worker waits for a permit inside that call
            time.sleep(0.01)
        short, long = worker.predict(["s", "t"]), worker.predict(["x" * 5_000] * 3)
        later = worker.predict(["u"])
        for _ in range(3):
            model.permits.release()
        results = (first.result(60), short.result(60), long.result(60), later.result(60))
        assert [len(p) for p in results] == [1, 2, 3, 1]
        # the short texts are not padded to the long ones' length: those get the next call
        assert model.calls[1:] == [["s", "t", "u"], ["x" * 5_000] * 3]
    finally:
        worker.close()


def test_closing_the_worker_fails_what_still_waits():
    model = _Gated()
    worker = ModelWorker(model, max_batch_texts=256, max_queue=10, max_batch_chars=10)
    big = worker.predict([f"big{k:02d}" for k in range(20)])
    waiting = worker.predict(["w"])
    while not big.running():  # the worker has taken big's first slice
        time.sleep(0.01)
    closing = threading.Thread(target=worker.close)
    closing.start()
    with pytest.raises(Busy, match="shutting down"):  # failed by close: it was waiting
        waiting.result(60)
    model.permits.release()  # let the call in progress end
    with pytest.raises(Busy, match="shutting down"):  # no turn after that one
        big.result(60)
    closing.join(60)
    assert not closing.is_alive() and len(model.calls) == 1


def test_short_request_is_answered_while_a_large_one_runs():
    model = _Gated()
    limits = ServeLimits(max_texts=64, max_batch_chars=100)
    done = []
    with TestClient(create_app(model, limits), base_url=LOCAL) as c:

        def post(name, texts):
            r = c.post("/predict", json={"texts": texts})
            done.append((name, r.status_code, len(r.json()["predictions"])))

        big = threading.Thread(target=post, args=("big", ["x" * 100] * 64))  # one per call
        big.start()
        assert model.entered.wait(60)  # its first slice is in the model
        short = threading.Thread(target=post, args=("short", ["Who ?"]))
        short.start()
        deadline = time.monotonic() + 60
        while c.get("/health").json()["waiting"] < 1:  # the short one waits its turn
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(10):  # two calls suffice: the rest of big's first, then the short one
            model.permits.release()
            short.join(5)
            if not short.is_alive():
                break
        assert done == [("short", 200, 1)]  # and the large request is still being predicted
        for _ in range(64):
            model.permits.release()
        big.join(60)
        assert done[1] == ("big", 200, 64)


@pytest.fixture()
def live_server(predictor):
    """A real uvicorn server (with the slow-client deadlines of ``make_server``) on a free
    loopback port, giving clients 1 s to send a request's head and then its body."""
    limits = replace(SMALL, read_timeout_s=1)
    server = make_server(create_app(predictor, limits), limits, log_level="warning")
    sock = listen("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield sock.getsockname()
    server.should_exit = True
    thread.join(30)
    sock.close()


def _closed_by_server(conn: socket.socket, sending: bytes) -> tuple[int, bytes]:
    """Sends ``sending`` a byte every 0.05 s, reading whatever the server answers, until the
    server closes the connection: ``(bytes sent, bytes received)``."""
    conn.settimeout(0.05)
    got, sent = b"", 0
    for byte in sending:
        try:
            conn.sendall(bytes([byte]))
            sent += 1
            chunk = conn.recv(4096)
            if not chunk:
                return sent, got
            got += chunk
        except TimeoutError:
            continue
        except OSError:  # reset or broken pipe: closed
            return sent, got
    conn.settimeout(60)
    try:
        while chunk := conn.recv(4096):
            got += chunk
    except OSError:
        pass
    return sent, got


def test_slow_clients_are_cut_off(live_server):
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    # a head sent a byte at a time (0.05 s each: 1,000 bytes take ~50 s, the limit is 1 s)
    with socket.create_connection(live_server, timeout=60) as conn:
        trickle = head + b"X-Pad: " + b"a" * 1_000 + b"\r\n\r\n"
        sent, got = _closed_by_server(conn, trickle)
        assert sent < len(trickle) and got == b""
    # a connection that never sends anything is closed too
    with socket.create_connection(live_server, timeout=60) as conn:
        assert conn.recv(100) == b""
    # a body that stops arriving: 408 with the JSON error body
    body = json.dumps({"texts": ["Who wrote Hamlet ?"]}).encode()
    with socket.create_connection(live_server, timeout=60) as conn:
        conn.sendall(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["code"] == "body_timeout"
    # a client that keeps to the deadlines is answered, twice on one connection
    with socket.create_connection(live_server, timeout=60) as conn:
        for _ in range(2):
            conn.sendall(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            answer = b""
            while b"predictions" not in answer or not answer.endswith(b"}"):
                chunk = conn.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 OK")
