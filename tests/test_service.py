"""The HTTP service, started for real (uvicorn on a free loopback port) and called over HTTP with httpx."""
import asyncio

import httpx
import pytest

import qpairs
from qpairs.search import QuestionIndex
from qpairs.service import MAX_CHARS, MAX_PAIRS, create_app
from tiny_search_model import bank_questions, make_tiny_model, serving

WAIT_MS = 25.0  # a wide micro-batching window, so concurrent requests surely share batches


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    return qpairs.load(make_tiny_model(tmp_path_factory.mktemp("model")), device="cpu")


@pytest.fixture(scope="module")
def index(det):
    return QuestionIndex.build(det, bank_questions(), [f"q{i}" for i in range(200)])


@pytest.fixture(scope="module")
def url(det, index):
    with serving(create_app(det, index, max_wait_ms=WAIT_MS, max_body_bytes=64_000)) as base:
        yield base


@pytest.fixture
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def test_health_and_openapi(client, det):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["index"]["size"] == 200
    assert h["model"]["threshold"] == det.threshold and h["model"]["path"] == str(det.path)
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/search", "/health"} <= set(schema["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_predict_one_pair_matches_the_detector(client, det):
    q1, q2 = "How do I learn Python?", "how do i learn python?"
    r = client.post("/predict", json={"q1": q1, "q2": q2})
    assert r.status_code == 200
    body = r.json()
    assert body["probability"] == pytest.approx(det.predict_proba(q1, q2), rel=1e-6)
    assert body["duplicate"] is True and body["threshold"] == det.threshold


def test_predict_a_list_keeps_order(client, det):
    q1 = ["Is java hard?", "Who invented tennis?", "Is java hard?"]
    q2 = ["is JAVA hard?", "How difficult is tennis?", "Why do people like cats?"]
    r = client.post("/predict", json={"pairs": [{"q1": a, "q2": b} for a, b in zip(q1, q2)]})
    assert r.status_code == 200
    got = [x["probability"] for x in r.json()["results"]]
    assert got == pytest.approx(list(det.predict_proba(q1, q2)), rel=1e-6)
    assert [x["duplicate"] for x in r.json()["results"]] == [True, False, False]


@pytest.mark.parametrize("body, fragment", [
    ({"q1": "only one side"}, "missing field q2"),
    ({}, "missing field q1 and q2"),
    ({"q1": "a", "q2": "   "}, "q2: String should have at least 1 character"),
    ({"q1": "\u200b\u200c", "q2": "b"}, "q1: empty question"),
    ({"q1": "a", "q2": "\x00"}, "q2: empty question"),
    ({"q1": "a", "q2": "b", "pairs": [{"q1": "a", "q2": "b"}]}, "not both"),
    ({"pairs": []}, "pairs: List should have at least 1 item"),
    ({"pairs": [{"q1": "a"}]}, "pairs.0.q2: Field required"),
    ({"pairs": [{"q1": "a", "q2": "b"}] * (MAX_PAIRS + 1)}, f"at most {MAX_PAIRS} items"),
    ({"q1": "x" * (MAX_CHARS + 1), "q2": "b"}, f"at most {MAX_CHARS} characters"),
    ({"q1": 3, "q2": "b"}, "q1: Input should be a valid string"),
    ({"q1": "a", "q2": "b", "extra": 1}, "extra: Extra inputs are not permitted"),
])
def test_predict_rejects_bad_input_with_a_clear_422(client, body, fragment):
    r = client.post("/predict", json=body)
    assert r.status_code == 422
    assert fragment in r.json()["error"]


def test_invalid_json_and_oversized_bodies(client):
    r = client.post("/predict", content=b'{"q1": "a",', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "invalid JSON" in r.json()["error"]
    r = client.post("/predict", content=b'{"q1": "caf\xe9", "q2": "x"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid JSON at byte 11: b'\\xe9' is not UTF-8 text"
    r = client.post("/predict", content=b'\xff\xfe{"q1": "a", "q2": "bc"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid JSON at byte 0: b'\\xff' is not UTF-8 text"
    big = b'{"q1": "' + b"a" * 70_000 + b'", "q2": "b"}'
    r = client.post("/predict", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than 64000 bytes" in r.json()["error"]
    r = client.post("/predict", content=b'{"q1": "a", "q2": "b"}',  # curl -d without -H: a form's content type
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield b'{"q1": "'
        for _ in range(20):
            yield b"a" * 5000
        yield b'", "q2": "b"}'

    r = client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_search_matches_the_index(client, det, index):
    r = client.post("/search", json={"question": "WHO INVENTED PIANO?", "k": 4})
    assert r.status_code == 200
    body = r.json()
    expected = index.search(det, "WHO INVENTED PIANO?", k=4)
    assert [h["id"] for h in body["results"]] == [h.id for h in expected]
    assert body["results"][0]["text"] == "Who invented piano?" and body["results"][0]["duplicate"]
    assert body["index_size"] == 200
    for bad in ({"question": ""}, {"question": "x", "k": 0}, {"question": "x", "k": 1000}, {"k": 3},
                {"question": "x", "k": True}, {"question": "x", "k": "3"}, {"question": "x", "k": 2.0}):
        assert client.post("/search", json=bad).status_code == 422


def test_concurrent_requests_are_micro_batched_and_answered_correctly(url, client, det):
    before = client.get("/health").json()["batching"]["predict"]
    questions = bank_questions()[:40]
    expected = det.predict_proba(questions, [q.upper() for q in questions[::-1]])

    async def fire():
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            return await asyncio.gather(*(c.post("/predict", json={"q1": q, "q2": q2.upper()})
                                          for q, q2 in zip(questions, questions[::-1])))

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["probability"] for r in responses] == pytest.approx(list(expected), rel=1e-6)
    after = client.get("/health").json()["batching"]["predict"]
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 40 and batches < requests and after["largest_batch"] > 1


def test_search_without_an_index_is_503(det):
    with serving(create_app(det, None, max_wait_ms=0)) as base:
        r = httpx.post(base + "/search", json={"question": "Is java hard?"}, timeout=30)
        assert r.status_code == 503 and "--index" in r.json()["detail"]
        assert httpx.get(base + "/health", timeout=30).json()["index"] is None
        r = httpx.post(base + "/predict", json={"q1": "Is java hard?", "q2": "is java hard?"}, timeout=30)
        assert r.status_code == 200 and r.json()["duplicate"]


def test_micro_batcher_waits_only_for_requests_it_expects():
    """A lone request is run at once (no `max_wait`); after a batch of 3, the next 3 are gathered together
    even when they arrive 30 ms apart."""
    import asyncio
    import time
    from concurrent.futures import ThreadPoolExecutor

    from qpairs.service import MicroBatcher

    calls = []

    def double(items):
        calls.append(list(items))
        return [2 * x for x in items]

    async def scenario():
        batcher = MicroBatcher(double, ThreadPoolExecutor(1), max_wait_ms=5000)
        batcher.start()
        start = time.perf_counter()
        assert await batcher.submit([1]) == [2]
        alone = time.perf_counter() - start
        await asyncio.gather(*(batcher.submit([x]) for x in (2, 3, 4)))  # queued together: one batch of 3

        async def late(x, delay):
            await asyncio.sleep(delay)
            return await batcher.submit([x])

        assert await asyncio.gather(late(5, 0), late(6, 0.03), late(7, 0.06)) == [[10], [12], [14]]
        await batcher.stop()
        return alone

    alone = asyncio.run(scenario())
    assert alone < 2.5  # far below the 5 s window: it did not wait for company
    assert calls == [[1], [2, 3, 4], [5, 6, 7]]


def test_a_body_shorter_than_its_content_length_gets_408_not_a_hang(det):
    import socket
    import time

    with serving(create_app(det, None, max_wait_ms=0, read_timeout_s=1.0)) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n" + b'{"q1": "a"')
            start, reply = time.monotonic(), b""
            while time.monotonic() - start < 15:  # bounded: the socket timeout ends a hang too
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
                if b"}" in reply:
                    break
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b"Content-Length" in reply and b"not received within 1 s" in reply
        r = httpx.post(base + "/predict", json={"q1": "Is java hard?", "q2": "is java hard?"}, timeout=30)
        assert r.status_code == 200  # the server still answers others


def test_server_threads_go_to_onnx_runtime_sessions_and_torch_models_keep_one(monkeypatch):
    import torch

    from qpairs.onnxrt import available
    from qpairs.service import configure_threads

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    before = torch.get_num_threads()
    try:
        fast = qpairs.load("fast", device="cpu")  # a BiLSTM: torch (or bf16) runs it all
        assert configure_threads(fast) == 1 and torch.get_num_threads() == 1
        assert configure_threads(fast, 2) == 2 and torch.get_num_threads() == 2
        if available():
            ensemble = qpairs.load("default", device="cpu", backend="onnx-int8+torch")
            assert configure_threads(ensemble) == 2 and torch.get_num_threads() == 1  # two sessions, torch one
            assert len(ensemble.members[0].model.encoder.token_runtime.sessions) == 2
    finally:
        torch.set_num_threads(before)


def test_serve_refuses_a_port_another_server_holds_before_loading_anything():
    import socket

    from qpairs.service import require_free_port

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}: .*pass another --port"):
            require_free_port("127.0.0.1", port)
    require_free_port("127.0.0.1", 0)  # any free port
