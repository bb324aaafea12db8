"""A vision-language model behind an OpenAI-compatible chat-completions API as rubric judge.

One ``POST {endpoint}/chat/completions`` per image (the image as a PNG data URL, temperature 0),
sent ``concurrency`` at a time, through the standard library's ``urllib``. The key is read from
the environment variable :data:`KEY_VARIABLE` when the judge is planned and built, and lives only
in memory: it is not an option, so no run folder ever holds it.

Anything but a well-formed answer (an HTTP error, a timeout, a body that is not JSON, a reply
that is not a score) is an unreadable reply: asked once more, then a NaN counted as a failure.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from noisesearch.errors import ConfigError

from noisesearch_vlm.judging import COUNTERS, Judge, Reply, conversation
from noisesearch_vlm.rubric import check_metric

if TYPE_CHECKING:
    from PIL import Image

#: The environment variable holding the API key (``Authorization: Bearer ...``).
KEY_VARIABLE = "NOISESEARCH_VLM_API_KEY"
ENDPOINT = "https://api.openai.com/v1"
MODEL = "gpt-4o"


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
        """The counters since the last call; ``errors``: requests that got no usable answer."""
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
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies)) or 1) as pool:
            replies = list(pool.map(self._post, bodies))
        self._cost["requests"] += len(bodies)
        self._cost["errors"] += sum(r.text is None for r in replies)
        return replies

    def _post(self, body: dict[str, Any]) -> Reply:
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode("utf-8"), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return reply_of(response.read())
        except (OSError, http.client.HTTPException, ValueError):  # HTTP errors, timeouts, refusals
            return Reply(None)
