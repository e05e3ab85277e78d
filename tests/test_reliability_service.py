"""The rerank service under abuse: bounded memory, 4xx answers, /health still answers.

The real server (``mixencoder serve`` under uvicorn, as in tests/test_service.py) gets oversized
bodies (declared and chunked), deeply nested JSON, slow clients that trickle a body, many
concurrent connections (200 by default, 1,000 with ``-m slow``), and path-like model names.
After each, ``/health`` must answer 200 within a second or two and the server's resident memory
must stay within a bound.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from mixencoder import CandidateStore, MixEncoder  # noqa: E402
from mixencoder.data import read_corpus  # noqa: E402
from reliability_support import wait_for_health  # noqa: E402

N_DOCS = 20
LIMITS = {"max_documents": 25, "max_document_chars": 2000, "max_query_chars": 120,
          "max_body_bytes": 60_000}
RSS_GROWTH_MB = 150  # what abuse may add to the server's resident memory, at most


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(shared_data, tiny_backbone_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("abuse")
    model = MixEncoder.from_pretrained(tiny_backbone_dir, candidate_max_length=120)
    model.save_pretrained(root / "model")
    model = MixEncoder.from_pretrained(root / "model")
    docs = list(itertools.islice(read_corpus(shared_data / "vaswani" / "doc-text.trec"), N_DOCS))
    CandidateStore.build(root / "store", model, docs, batch_size=64)
    port = _free_port()
    cmd = [sys.executable, "-m", "mixencoder.cli", "serve", "--model", str(root / "model"),
           "--store", str(root / "store"), "--port", str(port), "--threads", "1",
           "--log-level", "warning",
           *itertools.chain.from_iterable((f"--{k.replace('_', '-')}", str(v))
                                          for k, v in LIMITS.items())]
    log = open(root / "server.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    wait_for_health(proc, client, root / "server.log")
    info = dict(client=client, port=port, proc=proc, docids=[d.docid for d in docs],
                texts=[d.text for d in docs], rss0=rss_mb(proc.pid), log=root / "server.log")
    yield info
    client.close()
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def healthy(server, within: float = 5.0) -> None:
    t0 = time.monotonic()
    r = httpx.get(f"http://127.0.0.1:{server['port']}/health", timeout=within)
    assert r.status_code == 200 and time.monotonic() - t0 < within
    growth = rss_mb(server["proc"].pid) - server["rss0"]
    assert growth < RSS_GROWTH_MB, f"server RSS grew by {growth:.0f} MB"
    assert server["proc"].poll() is None


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, socket.timeout):
            pass
        return b"".join(chunks)


def test_oversized_bodies_are_413_and_never_buffered(server) -> None:
    port = server["port"]
    head = (b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 500000000\r\nConnection: close\r\n\r\n")
    assert _raw(port, head + b"{").startswith(b"HTTP/1.1 413")
    # Chunked, 8 MB: counted as it arrives, refused once over the limit.
    def chunks():
        for _ in range(128):
            yield b"x" * 65536

    r = server["client"].post("/rerank", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "over this server's limit" in r.json()["error"]
    # Just over the limit, declared honestly.
    big = b'{"query": "q", "texts": ["' + b"a" * 70_000 + b'"]}'
    r = server["client"].post("/rerank", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    healthy(server)


@pytest.mark.parametrize("shape", ["list", "object", "in-field"])
def test_deeply_nested_json_is_a_4xx(server, shape: str) -> None:
    depth = 25_000  # 50 kB: under the body limit, far over any parser's recursion limit
    if shape == "list":
        body = "[" * depth + "]" * depth
    elif shape == "object":
        body = '{"a":' * depth + "1" + "}" * depth
    else:
        body = '{"query": "q", "texts": ' + "[" * depth + "]" * depth + "}"
    r = server["client"].post("/rerank", content=body.encode(),
                              headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert "error" in r.json()
    healthy(server)


def test_slow_clients_do_not_block_others(server) -> None:
    port = server["port"]
    stop = threading.Event()
    results = []

    def trickle():
        body = b'{"query": "dielectric", "texts": ["a", "b"]}'
        head = (f"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(head)
                for i in range(len(body)):
                    if stop.is_set():
                        return
                    s.sendall(body[i : i + 1])
                    time.sleep(0.05)
                results.append(s.recv(200))
        except OSError as e:
            results.append(repr(e).encode())

    threads = [threading.Thread(target=trickle) for _ in range(20)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for _ in range(3):  # while 20 clients trickle their bodies
            healthy(server, within=3.0)
            r = server["client"].post("/rerank", json={"query": "radio", "texts": server["texts"][:3]})
            assert r.status_code == 200
    finally:
        for t in threads:
            t.join(timeout=60)
        stop.set()
    assert len(results) == 20 and all(r.startswith(b"HTTP/1.1 200") for r in results), results[:3]
    healthy(server)


async def _many(port: int, n: int) -> list[bytes]:
    async def one(i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            if i % 2:
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            else:
                body = b'{"query": "waves", "docids": ["%s"]}' % str(1 + i % N_DOCS).encode()
                writer.write(b"POST /store/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: "
                             b"application/json\r\nConnection: close\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
            return await asyncio.wait_for(reader.read(), timeout=240)
        finally:
            writer.close()

    # All connections open at once before any is answered: open them, then send.
    return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)


@pytest.mark.parametrize("n", [200, pytest.param(1000, marks=pytest.mark.slow)])
def test_many_concurrent_connections(server, n: int) -> None:
    results = asyncio.run(_many(server["port"], n))
    errors = [r for r in results if isinstance(r, BaseException)]
    statuses = [r.split(b" ", 2)[1] for r in results if isinstance(r, bytes) and r]
    assert not errors, errors[:3]
    assert statuses.count(b"200") == n, {s: statuses.count(s) for s in set(statuses)}
    healthy(server)


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/shadow", "C:\\Windows\\x",
                                  "model\x00name", "~root/.ssh/id_rsa", "a" * 5000])
def test_path_like_model_names_are_never_opened_or_echoed(server, name: str) -> None:
    for endpoint in ("/v1/rerank", "/v2/rerank"):
        r = server["client"].post(endpoint, json={"model": name, "query": "radio",
                                                  "documents": server["texts"][:2]})
        assert r.status_code in (200, 400, 413, 422), (endpoint, r.status_code, r.text[:200])
        assert "root:" not in r.text and name not in r.text, r.text[:300]
    healthy(server)
