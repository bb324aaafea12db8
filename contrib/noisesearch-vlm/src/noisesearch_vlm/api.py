"""A vision-language model behind an OpenAI-compatible chat-completions API as rubric judge.

One ``POST {endpoint}/chat/completions`` per image (the image as a PNG data URL, temperature 0),
sent ``concurrency`` at a time, through the standard library's ``urllib``. The key is read from
the environment variable :data:`KEY_VARIABLE` when the judge is planned and built, and lives only
in memory: it is not an option, so no run folder ever holds it.

What the server's answers mean:

- HTTP 401, 403 or 404 (a key it refuses, a model or an endpoint it does not have), and, before
  the server has answered once, a host name that does not resolve, a refused connection or an
  untrusted certificate: a configuration error (:class:`~noisesearch.errors.ConfigError` naming
  the endpoint, the model or :data:`KEY_VARIABLE`), raised on the judge's first request, which is
  sent alone; no retry, no NaN.
- Anything else that is not a well-formed answer (another HTTP error such as 5xx, a timeout, a
  dropped connection, a body that is not a chat completion, a reply that is not a score) is an
  unreadable reply: asked once more, then a NaN counted as a failure. ``take_cost()`` counts the
  requests that got no usable answer in ``errors`` and by kind (``errors_http_503``,
  ``errors_timeout``, ``errors_connection``, ``errors_unreadable``), which the run adds to
  ``run.json``'s ``usage.verifier_cost``; :attr:`VLMAPIJudge.last_error` describes the last one
  (class, HTTP status, the first 200 bytes of the body, the URL).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from noisesearch.errors import ConfigError

from noisesearch_vlm.judging import COUNTERS, Judge, Reply, conversation
from noisesearch_vlm.rubric import check_metric

if TYPE_CHECKING:
    from PIL import Image

#: The environment variable holding the API key (``Authorization: Bearer ...``).
KEY_VARIABLE = "NOISESEARCH_VLM_API_KEY"
ENDPOINT = "https://api.openai.com/v1"
MODEL = "gpt-4o"
#: At most this much of an error's body is kept (:attr:`VLMAPIJudge.last_error`).
QUOTED_BODY_BYTES = 200


def api_key() -> str:
    """The key from :data:`KEY_VARIABLE`; a :class:`ConfigError` naming it when it is unset."""
    key = os.environ.get(KEY_VARIABLE, "").strip()
    if not key:
        raise ConfigError(
            "verifier vlm-api",
            f"no API key: set the environment variable {KEY_VARIABLE} (any non-empty value for a "
            f"server that needs none)",
        )
    return key


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def reply_of(body: bytes) -> Reply:
    """The reply in a chat-completions response body; ``Reply(None)`` for anything malformed."""
    try:
        data = json.loads(body.decode("utf-8"))
        content = data["choices"][0]["message"]["content"]
        usage = data.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return Reply(None)
    if isinstance(content, list):  # content parts, as some servers send them
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        return Reply(None)
    usage = usage if isinstance(usage, dict) else {}
    counts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    tokens_in, tokens_out = (n if type(n) is int and n >= 0 else 0 for n in counts)
    return Reply(content, tokens_in, tokens_out)


@dataclass(frozen=True)
class Failure:
    """A request that got no usable answer: ``kind`` keys its counter in ``take_cost()``
    (``errors_<kind>``), ``description`` says what came back."""

    kind: str
    description: str


def quoted(body: bytes) -> str:
    """The first :data:`QUOTED_BODY_BYTES` of a body, on one line."""
    text = body[:QUOTED_BODY_BYTES].decode("utf-8", "replace")
    text = " ".join(text.split())
    return repr(text + ("..." if len(body) > QUOTED_BODY_BYTES else ""))


def error_body(error: urllib.error.HTTPError) -> bytes:
    try:
        return error.read(QUOTED_BODY_BYTES + 1) or b""
    except (OSError, http.client.HTTPException, ValueError):
        return b""


class VLMAPIJudge(Judge):
    """A vision-language model behind an OpenAI-compatible API judges each image: 0 to 10.

    The same rubric and strict reading as the local ``vlm`` judge. The API key comes from the
    environment variable NOISESEARCH_VLM_API_KEY, never from an option or a file.

    :param endpoint: base URL of the API, up to ``/v1`` (``/chat/completions`` is appended):
        OpenAI's, or a local server's such as vLLM's ``http://127.0.0.1:8000/v1``.
    :param model: the model name the server knows (``gpt-4o``, ``Qwen/Qwen2.5-VL-7B-Instruct``).
    :param metric: the rubric criterion: accuracy, creativity, quality, consistency,
        resonance or overall.
    :param max_tokens: the most tokens a reply may have.
    :param concurrency: requests in flight at once.
    :param timeout: seconds to wait for one answer before counting it unreadable.
    """

    def __init__(
        self,
        endpoint: str = ENDPOINT,
        model: str = MODEL,
        metric: str = "overall",
        max_tokens: int = 8,
        concurrency: int = 4,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(metric)
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {endpoint!r} is not an http:// or https:// URL")
        if max_tokens < 1 or concurrency < 1 or timeout <= 0:
            raise ValueError(f"max_tokens and concurrency must be at least 1 and timeout positive, got "
                             f"{max_tokens}, {concurrency} and {timeout}")
        self._key = api_key()
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model = model
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.timeout = timeout
        self._cost = dict.fromkeys((*COUNTERS, "errors"), 0)
        #: The last request that got no usable answer: its class, HTTP status, the first 200
        #: bytes of its body and the URL (``None`` while every request was answered).
        self.last_error: str | None = None
        self._answered = False  # the server has answered (any HTTP status) at least once

    @classmethod
    def describe(cls, metric: str = "overall", **options: Any) -> dict[str, Any]:
        """Checked while planning, before anything loads: the metric and the key's presence."""
        try:
            check_metric(metric)
        except ValueError as exc:
            raise ConfigError("verifier vlm-api", str(exc)) from None
        api_key()
        return {"requires": cls.requires}

    def take_cost(self) -> dict[str, int]:
        """The counters since the last call; ``errors``: requests that got no usable answer, and
        ``errors_<kind>`` the same by kind (``http_<status>``, ``timeout``, ``connection``,
        ``unreadable``), present when not zero: ``run.json`` says why a run's scores are NaN."""
        cost = super().take_cost()
        self._cost["errors"] = 0
        return cost

    def ask(
        self, images: Sequence[Image.Image], question: str, previous: Sequence[str | None] | None
    ) -> list[Reply]:
        bodies = [
            {
                "model": self.model,
                "messages": conversation(
                    question, None if previous is None else previous[i],
                    {"type": "image_url", "image_url": {"url": png_data_url(image)}},
                ),
                "max_tokens": self.max_tokens,
                "temperature": 0,
            }
            for i, image in enumerate(images)
        ]
        answers = []
        if not self._answered and bodies:  # the first request alone: a wrong key costs one
            answers.append(self._post(bodies[0]))
        rest = bodies[len(answers):]
        if rest:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(rest))) as pool:
                answers += pool.map(self._post, rest)
        self._cost["requests"] += len(bodies)
        for _, failure in answers:
            if failure is not None:
                self._cost["errors"] += 1
                key = f"errors_{failure.kind}"
                self._cost[key] = self._cost.get(key, 0) + 1
                self.last_error = failure.description
        return [reply for reply, _ in answers]

    def _post(self, body: dict[str, Any]) -> tuple[Reply, Failure | None]:
        """One request: its reply and, when it got no usable answer, why. A configuration error
        (see the module's documentation) is raised."""
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode("utf-8"), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            self._answered = True
            raw = error_body(exc)
            what = f"HTTP {exc.code} {exc.reason} from {self.url}: {quoted(raw)}"
            self._refuse_status(exc.code, what)
            return Reply(None), Failure(f"http_{exc.code}", f"HTTPError {what}")
        except urllib.error.URLError as exc:  # no HTTP answer: DNS, connection, TLS, timeout
            reason = exc.reason
            if not self._answered:
                self._refuse_connection(reason)
            if isinstance(reason, TimeoutError):
                return Reply(None), self._timed_out(reason)
            return Reply(None), Failure(
                "connection", f"URLError ({type(reason).__name__}: {reason}) from {self.url}"
            )
        except TimeoutError as exc:  # the answer did not come in time
            return Reply(None), self._timed_out(exc)
        except http.client.InvalidURL as exc:
            raise ConfigError("vlm-api.endpoint", f"{self.url!r} is not a valid URL ({exc})") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:  # dropped, reset
            return Reply(None), Failure("connection", f"{type(exc).__name__} ({exc}) from {self.url}")
        self._answered = True
        reply = reply_of(raw)
        if reply.text is None:
            return reply, Failure("unreadable", f"HTTP 200 from {self.url} with no chat-completions "
                                                f"reply in its body: {quoted(raw)}")
        return reply, None

    def _timed_out(self, exc: BaseException) -> Failure:
        return Failure("timeout", f"{type(exc).__name__}: no answer from {self.url} within "
                                  f"{self.timeout:g} s (vlm-api.timeout)")

    def _refuse_status(self, status: int, what: str) -> None:
        """401, 403 and 404: nothing a retry changes."""
        if status == 401:
            raise ConfigError(
                "verifier vlm-api",
                f"the server refused the API key: {what}; set {KEY_VARIABLE} to a key that "
                f"vlm-api.endpoint accepts",
            )
        if status == 403:
            raise ConfigError(
                "verifier vlm-api",
                f"the key may not do this: {what}; check the key in {KEY_VARIABLE} and "
                f"vlm-api.model={self.model!r}",
            )
        if status == 404:
            raise ConfigError(
                "vlm-api.endpoint",
                f"no chat-completions API or no model {self.model!r} there: {what}; check "
                f"vlm-api.endpoint (the base URL up to /v1; /chat/completions is appended) and "
                f"vlm-api.model",
            )

    def _refuse_connection(self, reason: object) -> None:
        """Before any answer: a host that does not resolve, nothing listening, a certificate
        not trusted. These do not come and go: the endpoint (or the network) is wrong."""
        host = urlparse(self.url).netloc
        if isinstance(reason, socket.gaierror):
            why = f"the host name of {host!r} does not resolve ({reason}): a typo, or no network here"
        elif isinstance(reason, ConnectionRefusedError):
            why = f"nothing accepts connections at {host!r} ({reason}): is the server running there?"
        elif isinstance(reason, ssl.SSLCertVerificationError):
            why = f"the TLS certificate of {host!r} is not trusted ({reason})"
        else:
            return
        raise ConfigError("vlm-api.endpoint", f"cannot reach {self.url}: {why}")
