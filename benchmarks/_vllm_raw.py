"""Run by benchmarks/elicit_throughput.py with the vLLM environment's Python: the raw
engine on pre-tokenized prompts (token ids in, token ids out), timed without start-up."""

import json
import sys
import time

from vllm import LLM, SamplingParams


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    llm = LLM(model=spec["model"], dtype="float32", enforce_eager=True, seed=0, max_model_len=spec["max_model_len"])
    params = SamplingParams(max_tokens=spec["max_tokens"], temperature=0.0, detokenize=False)
    llm.generate([{"prompt_token_ids": p} for p in spec["prompts"][:4]], params, use_tqdm=False)  # warm-up
    runs = []
    for _ in range(spec.get("reps", 1)):  # the fastest counts, as on the kdbench side
        t0 = time.perf_counter()
        out = llm.generate([{"prompt_token_ids": p} for p in spec["prompts"]], params, use_tqdm=False)
        runs.append((time.perf_counter() - t0, sum(len(o.outputs[0].token_ids) for o in out)))
    seconds, tokens = min(runs)
    print(json.dumps({"seconds": seconds, "tokens": tokens}))


if __name__ == "__main__":  # the engine spawns processes that import this module
    main()
