"""The OpenAI-compatible teacher backend: a hosted model, or vLLM's API server.

Requests run concurrently up to ``concurrency``. 429, 5xx, timeouts, dropped
connections and malformed JSON are retried with exponential backoff and jitter
(up to ``max_retries``); other 4xx errors stop with the server's message. Each
finished request is handed to ``on_result`` at once, so the caller's cache
keeps partial progress on disk and a rerun asks only what is missing.

The API key comes from the environment only (``KDBENCH_OPENAI_API_KEY``, else
``OPENAI_API_KEY``; a local server needs none). It is never stored in a config,
logged, tracked or put in a report, and error messages are scrubbed of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time

from kdbench.elicit.backends import Messages, Sampling
from kdbench.errors import KdbenchError

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}  # plus timeouts, dropped connections, bad JSON


def api_key() -> str | None:
    return os.environ.get("KDBENCH_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")


def _scrub(text: str) -> str:
    key = api_key()
    return text.replace(key, "***") if key else text


class OpenAIBackend:
    name = "openai"

    def __init__(self, ref: str, *, base_url: str | None = None, model: str | None = None, concurrency: int = 4,
                 timeout: float = 60.0, max_retries: int = 6, backoff: float = 0.5, **_ignored):
        try:
            import openai  # noqa: F401
        except ImportError as e:
            raise KdbenchError(f"the openai backend needs the OpenAI client: `pip install -e .[openai]` ({e})") from None
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.model = model or ref
        self.concurrency, self.timeout = concurrency, timeout
        self.max_retries, self.backoff = max_retries, backoff
        self.generated_tokens = 0
        self.seconds = 0.0
        self.retries = 0

    async def _one(self, client, sem, messages: Messages, sampling: Sampling) -> str:
        import openai

        extra = {"seed": sampling.seed} if sampling.temperature > 0 else {}
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                async with sem:
                    r = await client.chat.completions.create(
                        model=self.model, messages=messages, max_tokens=sampling.max_new_tokens,
                        temperature=sampling.temperature, top_p=sampling.top_p, **extra)
                text = r.choices[0].message.content or ""
            except openai.APIStatusError as e:
                if e.status_code in RETRYABLE:
                    last = f"HTTP {e.status_code}"
                    continue
                raise KdbenchError(_scrub(f"teacher endpoint {self.base_url} refused the request: HTTP "
                                          f"{e.status_code}: {str(e)[:300]}")) from None
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                last = type(e).__name__
                continue
            except (openai.APIResponseValidationError, json.JSONDecodeError, AttributeError, IndexError,
                    TypeError, ValueError) as e:
                last = f"malformed response ({type(e).__name__})"
                continue
            self.generated_tokens += int(getattr(r.usage, "completion_tokens", 0) or 0)
            return text.strip()
        raise KdbenchError(_scrub(f"teacher endpoint {self.base_url} failed after {self.max_retries + 1} attempts "
                                  f"(last: {last}); finished requests are cached, rerun to continue"))

    async def _all(self, requests, sampling, on_result):
        import openai

        sem = asyncio.Semaphore(self.concurrency)
        outputs: list[str | None] = [None] * len(requests)
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key() or "EMPTY", max_retries=0,
                                    timeout=self.timeout)
        async with client:
            async def run(i):
                outputs[i] = await self._one(client, sem, requests[i], sampling)
                if on_result is not None:
                    on_result(i, outputs[i])

            tasks = [asyncio.create_task(run(i)) for i in range(len(requests))]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        return outputs

    def generate(self, requests: list[Messages], sampling: Sampling, desc: str = "generate",
                 on_result=None) -> list[str]:
        t0 = time.perf_counter()
        try:
            return asyncio.run(self._all(requests, sampling, on_result))
        finally:
            self.seconds += time.perf_counter() - t0
