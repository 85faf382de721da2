"""Run by benchmarks/elicit_throughput.py with the vLLM environment's Python: the raw
engine on pre-tokenized prompts (token ids in, token ids out), timed without start-up.

It loads the engine, warms it up and prints ``KDB ready``; then each ``go`` line on
stdin runs the prompts once and prints ``KDB {"seconds": s, "tokens": n}``, so the
caller can alternate it with kdbench's side repetition by repetition.
"""

import json
import sys
import time

from vllm import LLM, SamplingParams


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    llm = LLM(model=spec["model"], dtype="float32", enforce_eager=True, seed=0, max_model_len=spec["max_model_len"])
    params = SamplingParams(max_tokens=spec["max_tokens"], temperature=0.0, detokenize=False)
    prompts = [{"prompt_token_ids": p} for p in spec["prompts"]]
    llm.generate(prompts[:4], params, use_tqdm=False)  # warm-up
    print("KDB ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        t0 = time.perf_counter()
        out = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        print(
            "KDB " + json.dumps({"seconds": seconds, "tokens": sum(len(o.outputs[0].token_ids) for o in out)}),
            flush=True,
        )


if __name__ == "__main__":  # the engine spawns processes that import this module
    main()
