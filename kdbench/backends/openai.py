"""The OpenAI-compatible teacher backend: a hosted model, or vLLM's API server.

It speaks the chat completions protocol over one pooled ``httpx`` client (the
OpenAI SDK's transport, without its per-response model parsing, which costs
client CPU that a local server on the same machine would have used to generate).
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

from kdbench.backends.base import Messages, Sampling
from kdbench.errors import RuntimeFailure, UserError

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}  # plus timeouts, dropped connections, bad JSON


def api_key() -> str | None:
    return os.environ.get("KDBENCH_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")


def _scrub(text: str) -> str:
    key = api_key()
    return text.replace(key, "***") if key else text


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        ref: str,
        *,
        base_url: str | None = None,
        model: str | None = None,
        concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff: float = 0.5,
        **_ignored,
    ):
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:  # never a default public host: the teacher's name and prompts would go there
            raise UserError(
                "the openai backend needs the endpoint: --set elicit.openai_base_url=URL (or OPENAI_BASE_URL)"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model or ref
        self.concurrency, self.timeout = concurrency, timeout
        self.max_retries, self.backoff = max_retries, backoff
        self.generated_tokens = 0
        self.seconds = 0.0
        self.retries = 0

    async def _one(self, client, sem, messages: Messages, sampling: Sampling) -> str:
        import httpx

        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.temperature > 0:
            body["seed"] = sampling.seed
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                async with sem:
                    r = await client.post("/chat/completions", json=body)
                if r.status_code in RETRYABLE:
                    last = f"HTTP {r.status_code}"
                    continue
                if r.status_code >= 400:
                    raise UserError(
                        _scrub(
                            f"teacher endpoint {self.base_url} refused the request: HTTP "
                            f"{r.status_code}: {r.text[:300]}"
                        )
                    )
                out = r.json()
                text = out["choices"][0]["message"]["content"] or ""
                tokens = int((out.get("usage") or {}).get("completion_tokens") or 0)
            except (httpx.TimeoutException, httpx.TransportError) as e:  # timeouts, refused or dropped connections
                last = type(e).__name__
                continue
            except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
                last = f"malformed response ({type(e).__name__})"
                continue
            self.generated_tokens += tokens
            return text.strip()
        raise RuntimeFailure(
            _scrub(
                f"teacher endpoint {self.base_url} failed after {self.max_retries + 1} attempts "
                f"(last: {last}); finished requests are cached, rerun to continue"
            )
        )

    async def _all(self, requests, sampling, on_result):
        import httpx

        sem = asyncio.Semaphore(self.concurrency)
        outputs: list[str] = [""] * len(requests)  # each filled by its task
        key = api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url + "/", headers=headers, timeout=self.timeout, limits=limits
        ) as client:

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

    def generate(
        self, requests: list[Messages], sampling: Sampling, desc: str = "generate", on_result=None
    ) -> list[str]:
        t0 = time.perf_counter()
        try:
            return asyncio.run(self._all(requests, sampling, on_result))
        finally:
            self.seconds += time.perf_counter() - t0
