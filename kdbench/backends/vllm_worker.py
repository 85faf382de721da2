"""A vLLM engine in its own process, spoken to in JSON lines over stdin/stdout.

Run by :mod:`kdbench.backends.vllm` with the Python of an environment that
has vLLM (vLLM pins its own torch, transformers and FastAPI, which need not
agree with Prefect's: keeping it in its own venv avoids the conflict). This
file imports only the standard library and vLLM, never kdbench.

Requests (one JSON object per line) and replies:
  {"op": "init", "model": ..., "dtype": ..., "enforce_eager": ..., ...} -> {"ok": true}
  {"op": "generate", "prompts": [[ids]], "max_tokens", "temperature", "top_p", "seed"}
      -> {"token_ids": [[ids]], "seconds": s}
  {"op": "score", "prompts": [[ids]], "spans": [[a, b]]} -> {"scores": [[sum_logprob, n]]}
  {"op": "config"} -> {"tensor_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization", "max_model_len"}
  {"op": "exit"}
Anything vLLM prints goes to stderr; stdout carries only replies.
"""

import json
import os
import sys
import time


def main() -> None:
    # Run as a script, this file's folder comes first on sys.path, and it holds kdbench's vllm.py (the
    # backend that starts this worker): without it there, `import vllm` finds the vLLM package.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library output to stderr; the protocol owns the original stdout
    llm = None
    for line in sys.stdin:
        req = json.loads(line)
        try:
            op = req.pop("op")
            if op == "exit":
                break
            if op == "init":
                from vllm import LLM  # pyright: ignore[reportAttributeAccessIssue]  # vLLM is in .venv-vllm only

                # generation_config="vllm": the model's generation_config.json sets no sampling default
                llm = LLM(generation_config="vllm", **req)
                out = {"ok": True}
            elif op == "generate":
                from vllm import SamplingParams  # pyright: ignore[reportAttributeAccessIssue]  # as LLM above

                # the model's own distribution: every other sampling knob explicitly neutral
                params = SamplingParams(
                    max_tokens=req["max_tokens"],
                    temperature=req["temperature"],
                    top_p=req["top_p"],
                    top_k=0,
                    min_p=0.0,
                    repetition_penalty=1.0,
                    presence_penalty=0.0,
                    frequency_penalty=0.0,
                    seed=req.get("seed"),
                    detokenize=False,
                )
                assert llm is not None, "generate before init"
                t0 = time.perf_counter()
                res = llm.generate([{"prompt_token_ids": p} for p in req["prompts"]], params, use_tqdm=False)
                out = {"token_ids": [list(r.outputs[0].token_ids) for r in res], "seconds": time.perf_counter() - t0}
            elif op == "config":
                assert llm is not None, "config before init"
                vc = llm.llm_engine.vllm_config
                out = {
                    "tensor_parallel_size": vc.parallel_config.tensor_parallel_size,
                    "pipeline_parallel_size": vc.parallel_config.pipeline_parallel_size,
                    "gpu_memory_utilization": vc.cache_config.gpu_memory_utilization,
                    "max_model_len": vc.model_config.max_model_len,
                }
            elif op == "score":
                from vllm import SamplingParams  # pyright: ignore[reportAttributeAccessIssue]  # as LLM above

                assert llm is not None, "score before init"
                res = llm.generate(
                    [{"prompt_token_ids": p} for p in req["prompts"]],
                    SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False),
                    use_tqdm=False,
                )
                scores = []
                for r, p, (a, b) in zip(res, req["prompts"], req["spans"], strict=False):
                    scores.append([sum(r.prompt_logprobs[i][p[i]].logprob for i in range(a, b)), b - a])
                out = {"scores": scores}
            else:
                out = {"error": f"unknown op {op!r}"}
        except Exception as e:  # report, keep serving
            out = {"error": f"{type(e).__name__}: {e}"}
        reply.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
