"""The rerank service: the real server process (``mixencoder serve`` under uvicorn on a free
loopback port) called over HTTP with httpx; a saved tiny MixEncoder and a real store of Vaswani
texts. Results must equal :meth:`Reranker.rerank` on the same input, in this process."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from mixencoder import CandidateStore, MixEncoder, Reranker  # noqa: E402
from mixencoder.data import read_corpus  # noqa: E402
from mixencoder.fusion import DEFAULT_FUSION, Fusion  # noqa: E402
from reliability_support import wait_for_health  # noqa: E402

N_DOCS = 40
LIMITS = {"max_documents": 25, "max_document_chars": 2000, "max_query_chars": 120, "max_body_bytes": 60_000}
QUERY = "measurement of dielectric constant of liquids"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def served(shared_data, tiny_backbone_dir, tmp_path_factory):
    """A saved tiny MixEncoder, its store over N_DOCS Vaswani documents, and a running server."""
    root = tmp_path_factory.mktemp("service")
    model = MixEncoder.from_pretrained(tiny_backbone_dir, candidate_max_length=120)  # 128 positions
    model.save_pretrained(root / "model")
    model = MixEncoder.from_pretrained(root / "model")  # exactly what the server loads
    docs = list(itertools.islice(read_corpus(shared_data / "vaswani" / "doc-text.trec"), N_DOCS))
    store = CandidateStore.build(root / "store", model, docs, batch_size=64)
    port = _free_port()
    cmd = [
        sys.executable, "-m", "mixencoder.cli", "serve", "--model", str(root / "model"), "--store", str(root / "store"),
        "--port", str(port), "--threads", "1", "--log-level", "warning",
        *itertools.chain.from_iterable((f"--{k.replace('_', '-')}", str(v)) for k, v in LIMITS.items()),
    ]
    log = open(root / "server.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, timeout=60)
    wait_for_health(proc, client, root / "server.log")
    yield dict(
        client=client, base=base, model=model, store=store, docs={d.docid: d.text for d in docs},
        log=root / "server.log", proc=proc,
    )
    client.close()
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def texts(served, n=6):
    return list(served["docs"].values())[:n]


def expected_scores(served, query, docs):
    """``Reranker.rerank`` of the texts in this process, as {index: score}."""
    ranked = Reranker(served["model"]).rerank(query, [str(i) for i in range(len(docs))], docs)
    return {int(r.docid): r.score for r in ranked}


def assert_error(response, status, error_type, message):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "error_type"}, body
    assert body["error_type"] == error_type, body
    assert message in body["error"], body
    assert "Traceback" not in response.text and "File \"" not in response.text


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------------- request shapes


def test_health_reports_fingerprints_counts_and_limits(served):
    body = served["client"].get("/health").json()
    assert body["status"] == "ok"
    assert body["model"]["fingerprint"] == served["model"].candidate_fingerprint()
    assert body["model"]["name"] == "model"
    assert body["store"]["count"] == N_DOCS
    assert body["store"]["fingerprint"] == served["store"].fingerprint
    assert body["limits"] == LIMITS
    assert str(served["store"].path) not in json.dumps(body)  # no paths leave the server


def test_tei_rerank_equals_the_reranker(served):
    docs = texts(served)
    expected = expected_scores(served, QUERY, docs)
    assert len(set(round(s, 6) for s in expected.values())) == len(docs), "ties: the test could not fail"
    raw = served["client"].post("/rerank", json={"query": QUERY, "texts": docs, "raw_scores": True}).json()
    assert [r["index"] for r in raw] == sorted(expected, key=lambda i: -expected[i])
    for r in raw:
        assert r["score"] == pytest.approx(expected[r["index"]], abs=1e-5)
        assert set(r) == {"index", "score"}
    default = served["client"].post("/rerank", json={"query": QUERY, "texts": docs, "return_text": True}).json()
    assert [r["index"] for r in default] == [r["index"] for r in raw]
    for r in default:
        assert r["score"] == pytest.approx(sigmoid(expected[r["index"]]), abs=1e-6)
        assert r["text"] == docs[r["index"]]


@pytest.mark.parametrize("path", ["/v2/rerank", "/v1/rerank"])
def test_cohere_and_jina_shapes(served, path):
    docs = texts(served)
    expected = expected_scores(served, QUERY, docs)
    order = sorted(expected, key=lambda i: -expected[i])
    documents = docs if path == "/v2/rerank" else [{"text": d} for d in docs]  # Jina/Cohere v1 take objects too
    body = served["client"].post(path, json={
        "model": "rerank-v3.5", "query": QUERY, "documents": documents, "top_n": 3, "return_documents": True,
    }).json()
    assert set(body) == {"id", "model", "results", "meta"} and body["model"] == "model"
    assert body["meta"]["api_version"]["version"] == path[2]
    assert [r["index"] for r in body["results"]] == order[:3]
    for r in body["results"]:
        assert r["relevance_score"] == pytest.approx(sigmoid(expected[r["index"]]), abs=1e-6)
        assert r["document"] == {"text": docs[r["index"]]}
    plain = served["client"].post(path, json={"query": QUERY, "documents": docs, "raw_scores": True}).json()
    assert [r["index"] for r in plain["results"]] == order
    assert all("document" not in r for r in plain["results"])
    assert plain["results"][0]["relevance_score"] == pytest.approx(expected[order[0]], abs=1e-5)


def test_store_endpoint_equals_the_reranker_with_and_without_fusion(served):
    docids = list(served["docs"])[:20][::-1]
    reranker = Reranker(served["model"], served["store"])
    expected = reranker.rerank(QUERY, docids)
    body = served["client"].post("/store/rerank", json={"query": QUERY, "docids": docids}).json()
    assert [r["docid"] for r in body["results"]] == [r.docid for r in expected]
    assert [r["score"] for r in body["results"]] == pytest.approx([r.score for r in expected], abs=1e-6)
    assert all(docids[r["index"]] == r["docid"] for r in body["results"])
    assert body["fusion"] == "none"  # no first-stage scores: the model's own scores
    with_scores = served["client"].post("/store/rerank", json={
        "query": QUERY, "docids": docids, "first_stage_scores": [float(i) for i in range(len(docids))],
    }).json()
    default = reranker.rerank(QUERY, docids, first_stage_scores=[float(i) for i in range(len(docids))])
    assert [r["docid"] for r in with_scores["results"]] == [r.docid for r in default]
    assert with_scores["fusion"] == str(DEFAULT_FUSION)  # scores given: the default fusion

    top = served["client"].post("/store/rerank", json={"query": QUERY, "docids": docids, "top_n": 5}).json()
    assert top["results"] == body["results"][:5]

    first = [float(len(docids) - i) for i in range(len(docids))]  # a first stage that ranks docids as given
    fusion = Fusion("interpolate", alpha=0.6)
    fused_expected = Reranker(served["model"], served["store"], fusion=fusion).rerank(QUERY, docids, first_stage_scores=first)
    assert [r.docid for r in fused_expected] != [r.docid for r in expected], "fusion changed nothing"
    fused = served["client"].post("/store/rerank", json={
        "query": QUERY, "docids": docids, "first_stage_scores": first, "fusion": {"method": "interpolate", "alpha": 0.6},
    }).json()
    assert [r["docid"] for r in fused["results"]] == [r.docid for r in fused_expected]
    assert [r["score"] for r in fused["results"]] == pytest.approx([r.score for r in fused_expected], abs=1e-6)
    assert fused["fusion"] == "interpolate(alpha=0.6)"
    as_dict = served["client"].post("/store/rerank", json={
        "query": QUERY, "docids": docids, "first_stage_scores": dict(zip(docids, first)), "fusion": {"method": "rrf"},
    }).json()
    rrf = Reranker(served["model"], served["store"], fusion=Fusion("rrf")).rerank(QUERY, docids, first_stage_scores=first)
    assert [r["docid"] for r in as_dict["results"]] == [r.docid for r in rrf]


def test_store_endpoint_names_unknown_and_duplicate_docids(served):
    client = served["client"]
    r = client.post("/store/rerank", json={"query": QUERY, "docids": ["1", "nope-1", "2", "nope-2"]})
    assert_error(r, 404, "UnknownDocids", "2 docid(s) are not in the candidate store: ['nope-1', 'nope-2']")
    assert r.json()["unknown_docids"] == ["nope-1", "nope-2"]
    assert_error(client.post("/store/rerank", json={"query": QUERY, "docids": ["1", "2", "1"]}),
                 422, "Validation", "docids holds 1 duplicate(s): ['1']")
    assert_error(client.post("/store/rerank", json={"query": QUERY, "docids": ["1", "2"], "first_stage_scores": [1.0]}),
                 422, "Validation", "first_stage_scores has 1 entries but there are 2 docids")
    assert_error(client.post("/store/rerank", json={"query": QUERY, "docids": ["1"], "fusion": {"method": "rrf"}}),
                 422, "Validation", "fusion rrf(k=60) combines the model's score with the first stage's, but the request has no first_stage_scores")
    nan = b'{"query": "radio", "docids": ["1", "2"], "first_stage_scores": [NaN, 1.0], "fusion": {"method": "rrf"}}'
    assert_error(client.post("/store/rerank", content=nan, headers={"content-type": "application/json"}),
                 422, "Validation", "NaN or infinite")
    assert_error(client.post("/store/rerank", json={"query": QUERY, "docids": ["1"], "fusion": {"method": "interpolate", "alpha": 2.0}}),
                 422, "Validation", "fusion: alpha must be in [0, 1]")
    assert_error(client.post("/store/rerank", json={"query": QUERY, "docids": ["1"], "path": "/etc/passwd"}),
                 422, "Validation", "path: Extra inputs are not permitted")


# ---------------------------------------------------------------------- limits and bad input


def test_every_limit_is_a_413_naming_it(served):
    client = served["client"]
    many = ["word"] * (LIMITS["max_documents"] + 1)
    assert_error(client.post("/rerank", json={"query": QUERY, "texts": many}), 413, "PayloadTooLarge",
                 "texts has 26 entries; this server takes at most 25 per request (mixencoder serve --max-documents)")
    assert_error(client.post("/v2/rerank", json={"query": QUERY, "documents": many}), 413, "PayloadTooLarge", "documents has 26 entries")
    assert_error(client.post("/store/rerank", json={"query": QUERY, "docids": [str(i) for i in range(26)]}),
                 413, "PayloadTooLarge", "docids has 26 entries")
    long_doc = "x" * (LIMITS["max_document_chars"] + 1)
    assert_error(client.post("/rerank", json={"query": QUERY, "texts": ["ok", long_doc]}), 413, "PayloadTooLarge",
                 "texts[1] has 2001 characters; this server takes at most 2000 per text (mixencoder serve --max-document-chars)")
    assert_error(client.post("/v1/rerank", json={"query": "q" * 121, "documents": ["ok"]}), 413, "PayloadTooLarge",
                 "query has 121 characters; this server takes at most 120 (mixencoder serve --max-query-chars)")
    big = json.dumps({"query": QUERY, "texts": ["y" * 1000] * 70}).encode()
    assert_error(client.post("/rerank", content=big, headers={"content-type": "application/json"}), 413, "PayloadTooLarge",
                 f"request body of {len(big)} bytes is over this server's limit of 60000 bytes (mixencoder serve --max-body-bytes)")

    def chunks():  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    assert_error(client.post("/rerank", content=chunks(), headers={"content-type": "application/json"}), 413,
                 "PayloadTooLarge", "over this server's limit of 60000 bytes")
    # Just under every limit passes.
    ok = client.post("/rerank", json={"query": "q" * 120, "texts": ["z" * 2000] * 25})
    assert ok.status_code == 200 and len(ok.json()) == 25


@pytest.mark.parametrize(
    ("path", "body", "status", "error_type", "message"),
    [
        ("/rerank", b'{"query": "a", "texts": ["b"', 400, "InvalidJSON", "the request body is not valid JSON"),
        ("/v2/rerank", b"not json at all", 400, "InvalidJSON", "the request body is not valid JSON"),
        ("/rerank", {"query": 5, "texts": ["b"]}, 422, "Validation", "query: Input should be a valid string"),
        ("/rerank", {"query": "a", "texts": "b"}, 422, "Validation", "texts: Input should be a valid list"),
        ("/rerank", {"query": "a", "texts": ["b", 3]}, 422, "Validation", "texts.1: Input should be a valid string"),
        ("/rerank", {"query": "a", "texts": ["b"], "raw_scores": "yes"}, 422, "Validation", "raw_scores: Input should be a valid boolean"),
        ("/rerank", {"texts": ["b"]}, 422, "Validation", "query: Field required"),
        ("/rerank", {"query": "   ", "texts": ["b"]}, 422, "Validation", "query is empty: pass the query text"),
        ("/rerank", {"query": "a", "texts": []}, 422, "Validation", "texts is empty: pass at least one"),
        ("/rerank", {"query": "a", "texts": ["b", " "]}, 422, "Validation", "texts[1] is empty"),
        ("/v2/rerank", {"query": "a", "documents": ["b"], "top_n": 0}, 422, "Validation", "top_n: Input should be greater than or equal to 1"),
        ("/v2/rerank", {"query": "a", "documents": ["b"], "top_n": "2"}, 422, "Validation", "top_n: Input should be a valid integer"),
        ("/v1/rerank", {"query": "a", "documents": [{"title": "b"}]}, 422, "Validation", "documents.0"),
        ("/store/rerank", {"query": "", "docids": ["1"]}, 422, "Validation", "query is empty"),
        ("/store/rerank", {"query": "a", "docids": [1]}, 422, "Validation", "docids.0: Input should be a valid string"),
        ("/store/rerank", [1, 2], 422, "Validation", "the request body must be a JSON object with this endpoint's fields"),
        ("/rerank", b"", 422, "Validation", "the request body is empty: send a JSON object"),
        ("/rerank", '{"query": "\u00e9", "texts": ["b"]}'.encode("latin-1"), 400, "InvalidJSON",
         "the request body is not valid JSON in UTF-8"),
        ("/rerank", ("text/plain", b'{"query": "a", "texts": ["b"]}'), 415, "UnsupportedMediaType",
         "the request body must be JSON sent with content-type: application/json (got 'text/plain')"),
    ],
)
def test_bad_requests_get_a_clear_json_error(served, path, body, status, error_type, message):
    if isinstance(body, tuple):
        r = served["client"].post(path, content=body[1], headers={"content-type": body[0]})
    elif isinstance(body, bytes):
        r = served["client"].post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = served["client"].post(path, json=body)
    assert_error(r, status, error_type, message)


def test_unknown_paths_and_methods_are_json_errors(served):
    assert_error(served["client"].get("/nope"), 404, "NotFound", "Not Found")
    assert_error(served["client"].get("/rerank"), 405, "MethodNotAllowed", "Method Not Allowed")


# ---------------------------------------------------------------------- concurrency and metrics


def test_concurrent_clients_each_get_their_own_correct_answer(served):
    queries = ["dielectric constant", "radio waves in the ionosphere", "transistor amplifier noise",
               "magnetic field measurement", "electron beams", "crystal lattice"] * 2
    docs = texts(served, 12)
    expected = {q: sorted(expected_scores(served, q, docs).items(), key=lambda kv: (-kv[1], kv[0])) for q in set(queries)}

    def call(q):
        with httpx.Client(base_url=served["base"], timeout=60) as c:
            return q, c.post("/rerank", json={"query": q, "texts": docs, "raw_scores": True}).json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, queries))
    for q, got in answers:
        assert [r["index"] for r in got] == [i for i, _ in expected[q]], q
        assert [r["score"] for r in got] == pytest.approx([s for _, s in expected[q]], abs=1e-5)


def test_metrics_count_requests_by_endpoint_and_status(served):
    client = served["client"]
    before = client.get("/metrics").text
    client.post("/rerank", json={"query": QUERY, "texts": ["a b c"]})
    client.post("/rerank", json={"query": "", "texts": ["a b c"]})
    text = client.get("/metrics").text

    def value(metrics, series):
        m = re.search(rf"^{re.escape(series)} (\S+)$", metrics, re.MULTILINE)
        return float(m.group(1)) if m else 0.0

    ok, bad = 'mixencoder_requests_total{endpoint="/rerank",status="200"}', 'mixencoder_requests_total{endpoint="/rerank",status="422"}'
    assert value(text, ok) == value(before, ok) + 1
    assert value(text, bad) == value(before, bad) + 1
    count = 'mixencoder_request_duration_seconds_count{endpoint="/rerank"}'
    inf = 'mixencoder_request_duration_seconds_bucket{endpoint="/rerank",le="+Inf"}'
    assert value(text, count) == value(text, inf) >= value(before, count) + 2
    assert value(text, "mixencoder_candidates_scored_total") >= value(before, "mixencoder_candidates_scored_total") + 1
    assert "# TYPE mixencoder_request_duration_seconds histogram" in text


def test_the_server_log_holds_no_unexpected_error(served):
    assert "Traceback" not in Path(served["log"]).read_text()


# ---------------------------------------------------------------------- in process


def test_cli_defaults_bind_loopback_and_dispatch(capsys):
    from mixencoder.cli import SUBCOMMANDS, main
    from mixencoder.service import _parser

    args = _parser().parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 8080)
    assert {"serve", "rerank"} <= set(SUBCOMMANDS)
    assert main(["nope"]) == 2 and "unknown subcommand 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0 and "--max-body-bytes" in capsys.readouterr().out


def test_no_store_and_internal_errors_without_a_stack_trace(tiny_backbone_dir):
    from fastapi.testclient import TestClient

    from mixencoder.service import RerankService, create_app

    model = MixEncoder.from_pretrained(tiny_backbone_dir)
    service = RerankService(model)
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        assert_error(client.post("/store/rerank", json={"query": "a", "docids": ["1"]}), 404, "NoStore",
                     "this server has no candidate store; start it with mixencoder serve --store DIR")
        assert client.get("/health").json()["store"] is None

        def broken(*_):
            raise RuntimeError("secret internal detail /home/user/model")

        service.text_reranker.rerank = broken
        r = client.post("/rerank", json={"query": "a", "texts": ["b"]})
        assert_error(r, 500, "Internal", "internal server error; see the server log")
        assert "secret" not in r.text
