"""The README's "add a pack" walk-through, done as a user would: scaffold, add items,
validate, run the flow, read the leaderboard."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent

FACTS = [  # (question, answer, seed prompt, mc question, choices, right)
    (
        "What is the largest ocean on Earth?",
        "The Pacific Ocean is the largest and deepest ocean on Earth.",
        "Name the biggest ocean on the planet.",
        "Which body of water covers more area than any other ocean?",
        ["Atlantic", "Indian", "Pacific", "Arctic"],
        2,
    ),
    (
        "What is the highest mountain above sea level?",
        "Mount Everest, in the Himalayas, is the highest mountain above sea level.",
        "Which Himalayan peak is the tallest in the world?",
        "Measured from sea level, which summit stands tallest?",
        ["Everest", "K2", "Denali", "Kilimanjaro"],
        0,
    ),
]


def run(*args, cwd, env):
    return subprocess.run([str(BIN / "kdbench"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def test_scaffold_add_items_validate_and_run(tmp_path):
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "prefect-results"),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    assert run("packs", "new", "geography", "--dir", "domains", cwd=tmp_path, env=env).returncode == 0
    root = tmp_path / "domains" / "geography"

    def append(rel: str, rows: list[dict]) -> None:
        with (root / rel).open("a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

    append(
        "knowledge.jsonl",
        [{"id": f"oceans-{i}", "topic": "rivers", "question": q, "answer": a} for i, (q, a, *_r) in enumerate(FACTS)],
    )
    append(
        "seeds.jsonl",
        [
            {"id": f"s-oceans-{i}", "topic": "rivers", "prompt": p, "fact": f"oceans-{i}"}
            for i, (_q, _a, p, *_r) in enumerate(FACTS)
        ],
    )
    append(
        "eval/data/mc.jsonl",
        [
            {
                "id": f"mc-oceans-{i}",
                "topic": "rivers",
                "question": mq,
                "choices": ch,
                "answer": r,
                "fact": f"oceans-{i}",
            }
            for i, (*_x, mq, ch, r) in enumerate(FACTS)
        ],
    )
    v = run("packs", "validate", str(root), cwd=tmp_path, env=env)
    assert v.returncode == 0 and "knowledge 10, seeds 18, geography_mc 10" in v.stdout, v.stdout + v.stderr
    listed = run("packs", "list", cwd=tmp_path, env=env)  # ./domains is searched too
    assert "geography" in listed.stdout

    r = run(
        "run",
        "geography",
        "--home",
        str(tmp_path / "home"),
        "--report-dir",
        str(tmp_path / "reports"),
        "--algorithms",
        "sft",
        "--seeds",
        "0",
        "--epochs",
        "2",
        "--set",
        "tiny.vocab_size=500",
        "--set",
        "tiny.teacher_epochs=2",
        "--set",
        "tiny.student_epochs=0.2",  # a new pack's student is pretrained on kdbench's four packs
        "--set",
        "tiny.teacher={hidden_size: 64, num_layers: 2, num_heads: 2, intermediate_size: 128}",
        "--set",
        "tiny.student={hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}",
        "--set",
        "trust_pack_code=true",  # a pack of the user's, outside kdbench's domains/: its eval/utils.py runs
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    md = (tmp_path / "reports" / "geography.md").read_text()
    assert "teacher" in md and "sft" in md
    assert "open the UI: mlflow ui --backend-store-uri" in r.stdout
