"""The API judge against a small OpenAI-compatible server on 127.0.0.1 (http.server in a thread).

The server's answer depends on the ``model`` the judge asks for: a score, a score object, words
then a score when asked again, or garbage of several kinds.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import noisesearch
import numpy as np
import pytest
import torch
from noisesearch import Condition
from noisesearch.errors import ConfigError
from noisesearch.testing import VerifierContract, unused_port

from noisesearch_vlm.api import KEY_VARIABLE, VLMAPIJudge
from noisesearch_vlm.rubric import RETRY

KEY = "sk-test-7f3a9c"
PROMPT = "a red circle above a blue square"


class FakeCompletions(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        FakeCompletions.received.append({"path": self.path, "auth": auth, "body": body})
        mode, asked_again = body["model"], len(body["messages"]) > 1
        if auth != f"Bearer {KEY}":
            return self.answer(401, {"error": {"message": "Incorrect API key provided: sk-wro***"}})
        if mode == "forbidden":
            return self.answer(403, {"error": {"message": "You may not use this model"}})
        if mode == "no-such-model":
            return self.answer(404, {"error": {"message": "The model `no-such-model` does not exist"}})
        if mode == "error-long":
            return self.answer(503, b"Service unavailable " + b"x" * 1000)
        if mode == "drop":
            self.close_connection = True
            return  # no answer at all
        if mode == "slow":
            time.sleep(1.0)
        if mode == "error":
            return self.answer(500, {"error": {"message": "overloaded"}})
        if mode == "garbage":
            return self.answer(200, b"<html>certainly not JSON")
        if mode == "no-choices":
            return self.answer(200, {"choices": []})
        content = {"valid": "7", "json": '{"score": 4}', "words": "Seven out of ten.", "slow": "7",
                   "words-then-valid": "6" if asked_again else "I would give it a 6."}[mode]
        self.answer(200, {"choices": [{"message": {"role": "assistant", "content": content}}],
                          "usage": {"prompt_tokens": 100, "completion_tokens": 3}})

    def answer(self, status: int, data: Any) -> None:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    FakeCompletions.received.clear()


def images(batch: int = 3) -> torch.Tensor:
    return torch.rand(batch, 3, 20, 24, generator=torch.Generator().manual_seed(0))  # (B, 3, H, W)


def judged(endpoint: str, mode: str, batch: int = 3, **options: Any) -> tuple[torch.Tensor, dict[str, int]]:
    judge = VLMAPIJudge(endpoint=endpoint, model=mode, **options)
    scores = judge.score(images(batch), Condition(prompt=PROMPT))
    return scores, judge.take_cost()


class TestVLMAPIJudgeContract(VerifierContract):
    verifier_factory = VLMAPIJudge
    registered_name = "vlm-api"

    @pytest.fixture(autouse=True)
    def _server(self, endpoint: str) -> None:
        self.verifier_options = {"endpoint": endpoint, "model": "valid"}


def test_a_score_reply_is_read_and_its_tokens_counted(endpoint: str) -> None:
    scores, cost = judged(endpoint, "valid")
    assert scores.tolist() == [7.0, 7.0, 7.0]
    assert cost == {"requests": 3, "tokens_in": 300, "tokens_out": 9, "retries": 0, "failures": 0,
                    "errors": 0}
    assert judged(endpoint, "json", batch=1)[0].tolist() == [4.0]


def test_the_request_carries_the_key_the_rubric_and_the_image_as_png(endpoint: str) -> None:
    from PIL import Image

    judged(endpoint, "valid", batch=1, metric="quality", max_tokens=5)
    (request,) = FakeCompletions.received
    assert request["path"] == "/v1/chat/completions" and request["auth"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "valid" and body["temperature"] == 0 and body["max_tokens"] == 5
    image_part, text_part = body["messages"][0]["content"]
    assert "visual quality and realism" in text_part["text"] and PROMPT in text_part["text"]
    header, data = image_part["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64"
    sent = Image.open(io.BytesIO(base64.b64decode(data)))
    assert sent.format == "PNG" and sent.size == (24, 20)
    expected = (images(1)[0].permute(1, 2, 0) * 255).round().byte()  # (H, W, 3)
    assert torch.equal(torch.from_numpy(np.array(sent.convert("RGB"))), expected)


def test_words_are_asked_about_once_more_with_the_reply_quoted(endpoint: str) -> None:
    scores, cost = judged(endpoint, "words-then-valid")
    assert scores.tolist() == [6.0, 6.0, 6.0]
    assert cost["requests"] == 6 and cost["retries"] == 3 and cost["failures"] == 0
    again = [r["body"]["messages"] for r in FakeCompletions.received if len(r["body"]["messages"]) > 1]
    assert len(again) == 3
    assert again[0][1] == {"role": "assistant", "content": [{"type": "text", "text": "I would give it a 6."}]}
    assert again[0][2]["content"][0]["text"] == RETRY


@pytest.mark.parametrize(("mode", "kind"), [("words", None), ("garbage", "unreadable"), ("error", "http_500"),
                                          ("no-choices", "unreadable"), ("drop", "connection")])
def test_a_server_answering_garbage_gives_counted_failures_never_a_crash(
    endpoint: str, mode: str, kind: str | None
) -> None:
    scores, cost = judged(endpoint, mode, batch=2)
    assert torch.isnan(scores).all()
    assert cost["requests"] == 4 and cost["retries"] == 2 and cost["failures"] == 2
    assert cost["errors"] == (0 if mode == "words" else 4)
    assert {k: v for k, v in cost.items() if k.startswith("errors_")} == ({} if kind is None else {
        f"errors_{kind}": 4})


def test_a_server_too_slow_to_answer_counts_as_a_failure(endpoint: str) -> None:
    scores, cost = judged(endpoint, "slow", batch=1, timeout=0.2)
    assert torch.isnan(scores).all() and cost["failures"] == 1 and cost["errors"] == 2
    assert cost["errors_timeout"] == 2


# -- errors that say what to fix ---------------------------------------------------------------


def refused_on_the_first_request(endpoint: str, model: str, match: str) -> ConfigError:
    """Scoring three images raises ``match`` after one request, never asked again."""
    judge = VLMAPIJudge(endpoint=endpoint, model=model)
    with pytest.raises(ConfigError, match=match) as caught:
        judge.score(images(3), Condition(prompt=PROMPT))
    assert len(FakeCompletions.received) == 1  # the first request alone: no retry, no NaN
    return caught.value


def test_a_refused_key_is_a_configuration_error_naming_the_variable_on_the_first_request(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_VARIABLE, "sk-wrong")
    error = refused_on_the_first_request(endpoint, "valid", f"^verifier vlm-api: .*HTTP 401 .*{KEY_VARIABLE}")
    assert "Incorrect API key provided" in str(error) and f"{endpoint}/chat/completions" in str(error)
    assert "sk-wrong" not in str(error)


def test_a_forbidden_or_unknown_model_is_a_configuration_error_naming_the_options(endpoint: str) -> None:
    error = refused_on_the_first_request(endpoint, "forbidden", f"HTTP 403 .*{KEY_VARIABLE}.*vlm-api.model")
    assert "You may not use this model" in str(error)
    FakeCompletions.received.clear()
    error = refused_on_the_first_request(endpoint, "no-such-model", "^vlm-api.endpoint: .*HTTP 404")
    assert "vlm-api.model" in str(error) and "does not exist" in str(error)



def test_an_endpoint_that_cannot_be_reached_is_a_configuration_error_before_any_answer() -> None:
    judge = VLMAPIJudge(endpoint=f"http://127.0.0.1:{unused_port()}/v1", model="valid")
    with pytest.raises(ConfigError, match="^vlm-api.endpoint: cannot reach .*Connection refused"):
        judge.score(images(2), Condition(prompt=PROMPT))
    judge = VLMAPIJudge(endpoint="http://no-such-host.invalid/v1", model="valid")  # RFC 2606: never resolves
    with pytest.raises(ConfigError, match="^vlm-api.endpoint: cannot reach .*does not resolve"):
        judge.score(images(2), Condition(prompt=PROMPT))


def test_a_server_gone_after_answering_gives_counted_failures_not_an_error() -> None:
    """Once the server has answered, a refused connection is a passing failure: NaN, counted."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    judge = VLMAPIJudge(endpoint=f"http://127.0.0.1:{server.server_address[1]}/v1", model="valid")
    assert judge.score(images(2), Condition(prompt=PROMPT)).tolist() == [7.0, 7.0]
    server.shutdown()
    server.server_close()
    judge.take_cost()
    scores = judge.score(images(2), Condition(prompt=PROMPT))
    cost = judge.take_cost()
    assert torch.isnan(scores).all() and cost["errors"] == cost["errors_connection"] == 4
    assert judge.last_error is not None and "Connection refused" in judge.last_error


def test_the_last_error_keeps_its_class_status_and_the_start_of_its_body(endpoint: str) -> None:
    judge = VLMAPIJudge(endpoint=endpoint, model="error-long")
    assert judge.last_error is None
    assert torch.isnan(judge.score(images(2), Condition(prompt=PROMPT))).all()
    assert judge.take_cost()["errors_http_503"] == 4
    error = judge.last_error
    assert error is not None and error.startswith("HTTPError HTTP 503 ")
    assert f"{endpoint}/chat/completions" in error and "Service unavailable xxx" in error
    assert "x" * 180 in error and "x" * 200 not in error  # the first 200 bytes of 1020


def test_without_a_key_the_run_is_refused_naming_the_variable_before_anything_loads(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(KEY_VARIABLE)
    with pytest.raises(ConfigError, match=KEY_VARIABLE):
        VLMAPIJudge(endpoint=endpoint)
    refusal = f"verifier vlm-api: no API key: set the environment variable {KEY_VARIABLE}"
    with pytest.raises(ConfigError, match=refusal):
        noisesearch.search(model="shapes", prompt=PROMPT, verifiers=["vlm-api"], output=str(tmp_path / "run"),
                           verifier_options={"vlm-api": {"endpoint": endpoint}})
    assert not (tmp_path / "run").exists() and not FakeCompletions.received


def test_a_bad_endpoint_or_metric_is_refused(endpoint: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        VLMAPIJudge(endpoint="127.0.0.1:8000/v1")
    with pytest.raises(ConfigError, match="metric 'beauty'"):
        VLMAPIJudge.describe(metric="beauty")


@pytest.mark.slow  # the shapes model imports diffusers
def test_a_run_counts_the_calls_in_run_json_and_never_writes_the_key(endpoint: str, tmp_path: Path) -> None:
    noisesearch.search(
        model="shapes", prompt=PROMPT, candidates=2, steps=1, verifiers=["vlm-api"], evaluator="none",
        verifier_options={"vlm-api": {"endpoint": endpoint, "model": "words-then-valid"}},
        output=str(tmp_path / "run"),
    )
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    cost = run["usage"]["verifier_cost"]["vlm-api"]
    assert {k: cost[k] for k in ("requests", "retries", "failures", "errors", "tokens_in")} == {
        "requests": 4, "retries": 2, "failures": 0, "errors": 0, "tokens_in": 400}
    assert run["config"]["verifier_options"]["vlm-api"]["endpoint"] == endpoint
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


@pytest.mark.slow  # the shapes model imports diffusers
def test_a_run_whose_every_request_failed_says_why_in_run_json(endpoint: str, tmp_path: Path) -> None:
    with pytest.raises(noisesearch.errors.NoiseSearchError, match="non-finite"):
        noisesearch.search(
            model="shapes", prompt=PROMPT, candidates=2, steps=1, verifiers=["vlm-api"], evaluator="none",
            verifier_options={"vlm-api": {"endpoint": endpoint, "model": "error"}},
            output=str(tmp_path / "run"),
        )
    cost = json.loads((tmp_path / "run" / "run.json").read_text())["usage"]["verifier_cost"]["vlm-api"]
    assert cost["errors"] == cost["errors_http_500"] == 4 and cost["failures"] == 2


@pytest.mark.slow  # the shapes model imports diffusers
def test_a_refused_key_fails_the_run_with_the_servers_reason(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_VARIABLE, "sk-wrong")
    with pytest.raises(ConfigError, match="HTTP 401 .*Incorrect API key"):
        noisesearch.search(
            model="shapes", prompt=PROMPT, candidates=2, steps=1, verifiers=["vlm-api"], evaluator="none",
            verifier_options={"vlm-api": {"endpoint": endpoint, "model": "valid"}},
            output=str(tmp_path / "run"),
        )
    assert len(FakeCompletions.received) == 1
