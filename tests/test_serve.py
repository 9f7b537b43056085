"""`ulmfit serve`: the HTTP API through an in-process client (limits, malformed JSON,
concurrent requests), and the model worker that serialises and batches model calls."""

import threading
import time
from dataclasses import asdict

import pytest
from fastapi.testclient import TestClient
from test_predict import tiny_models

import ulmfit
from ulmfit.cli import SERVE_DEFAULTS
from ulmfit.errors import UserError
from ulmfit.serve import Busy, ModelWorker, ServeLimits, create_app

SMALL = ServeLimits(max_texts=4, max_chars=200, max_body_bytes=2_000)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return ulmfit.load(tiny_models(tmp_path_factory)["ensemble"], device="cpu")


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, SMALL)) as c:
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
    r = client.post("/predict", content=iter([b'{"texts": ', b'["Who ?"]}']))
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def test_malformed_requests(client):
    for raw in (b"{not json", b"", b'{"texts": ["a"]', b"\xff\xfe"):
        _is_error(client.post("/predict", content=raw), 422, "malformed_json")
    _is_error(client.post("/explain", content=b"[1, 2"), 422, "malformed_json")
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
    with TestClient(create_app(_SlowEcho(fail_on="bad"), SMALL)) as c:
        _is_error(c.post("/predict", json={"texts": ["bad"]}), 500, "internal")
        assert c.post("/predict", json={"texts": ["ok"]}).json() == {"predictions": [{"label": "ok"}]}  # fmt: skip


def test_limits_are_checked_and_cli_defaults_match():
    assert SERVE_DEFAULTS == {k: v for k, v in asdict(ServeLimits()).items() if k in SERVE_DEFAULTS}
    with pytest.raises(UserError, match="max_texts"):
        ServeLimits(max_texts=0).check()


def test_serve_command_passes_its_settings(tmp_path_factory, monkeypatch, capsys):
    import uvicorn

    from ulmfit.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024")  # run() sets a default only
    model = str(tiny_models(tmp_path_factory)["single"])
    assert main(["serve", model, "--port", "8123", "--max-texts", "5", "--device", "cpu"]) == 0
    try:
        assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
        assert seen["app"].state.limits == ServeLimits(max_texts=5)
        assert "serving" in capsys.readouterr().err
    finally:
        seen["app"].state.worker.close()
    assert main(["serve", model, "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
    assert main(["serve", model, "--max-chars", "0"]) == 2
