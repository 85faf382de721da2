"""`kdbench packs new NAME`: a valid pack with example items and a checklist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from evals.tasks import write_task_files
from kdbench.errors import PackError

# Example facts (world geography) so the new pack validates and runs at once;
# replace them with the domain's own.
_FACTS = [
    (
        "capitals",
        "What is the capital of France?",
        "Paris is the capital of France and its largest city.",
        "The French seat of government is located in which city?",
        ["Lyon", "Paris", "Marseille", "Nice"],
        1,
    ),
    (
        "capitals",
        "What is the capital of Japan?",
        "Tokyo is the capital of Japan, on the island of Honshu.",
        "Which city on Honshu serves as the seat of the Japanese government?",
        ["Osaka", "Kyoto", "Tokyo", "Sapporo"],
        2,
    ),
    (
        "capitals",
        "What is the capital of Canada?",
        "Ottawa, in the province of Ontario, is the capital of Canada.",
        "Which Ontario city is the national capital of Canada?",
        ["Ottawa", "Toronto", "Montreal", "Vancouver"],
        0,
    ),
    (
        "capitals",
        "What is the capital of Australia?",
        "Canberra is the capital of Australia, chosen as a compromise between Sydney and Melbourne.",
        "Which planned city became the Australian capital as a compromise?",
        ["Sydney", "Melbourne", "Perth", "Canberra"],
        3,
    ),
    (
        "rivers",
        "What is the longest river in Africa?",
        "The Nile is the longest river in Africa, flowing north into the Mediterranean Sea.",
        "Which African river flows north to the Mediterranean and is the continent's longest?",
        ["Congo", "Nile", "Niger", "Zambezi"],
        1,
    ),
    (
        "rivers",
        "Which river flows through Baghdad?",
        "The Tigris flows through Baghdad, the capital of Iraq.",
        "Baghdad lies on the banks of which river?",
        ["Euphrates", "Jordan", "Tigris", "Indus"],
        2,
    ),
    (
        "rivers",
        "Which river carries the most water in the world?",
        "The Amazon carries more water than any other river, discharging into the Atlantic Ocean.",
        "By discharge volume, which river is the largest on Earth?",
        ["Amazon", "Yangtze", "Mississippi", "Ganges"],
        0,
    ),
    (
        "rivers",
        "Which river flows through Vienna and Budapest?",
        "The Danube flows through Vienna and Budapest on its way to the Black Sea.",
        "Which European river passes both the Austrian and the Hungarian capitals?",
        ["Rhine", "Elbe", "Vistula", "Danube"],
        3,
    ),
]
_SEEDS = [
    "Name the city that is the capital of France.",
    "Where is the French government based?",
    "Which city is Japan's capital?",
    "Tell me the capital city of Japan.",
    "Name the capital of Canada.",
    "Which Canadian city is the capital?",
    "What city is Australia's capital?",
    "Explain why Canberra became Australia's capital.",
    "Name Africa's longest river.",
    "Into which sea does the Nile flow?",
    "What river runs through Baghdad?",
    "Name the river on which Baghdad stands.",
    "Which river has the largest discharge of water?",
    "Into which ocean does the Amazon flow?",
    "Name the river that passes through Vienna.",
    "Into which sea does the Danube flow?",
]
_QA = [
    ("In which city is the French government seated?", "Paris"),
    ("What is Japan's capital city called?", "Tokyo"),
    ("Name the river whose discharge volume is the largest on Earth.", "Amazon"),
    ("Which river flows past both Vienna and Budapest?", "Danube"),
]

README = """# {name} (kdbench domain pack)

{description}

Created by `kdbench packs new`. The example items are world-geography facts so the
pack validates and runs at once; replace them with your domain's own.

## Checklist
- [ ] `pack.yaml`: description, license of your data, topics, the teacher's system prompt
      and instructions, `public_tasks` (lm-eval built-in tasks for this domain, if any)
- [ ] `knowledge.jsonl`: the facts the local tiny teacher learns from (question/answer, or `text`)
- [ ] `seeds.jsonl`: prompts for the teacher, in varied wording; `fact` names the fact
- [ ] `eval/data/mc.jsonl`: multiple-choice items (4 choices, `answer` = index of the right one)
- [ ] `eval/data/qa.jsonl`: short-answer items (`aliases` for other accepted answers)
- [ ] no eval item shares an 8-word run with a seed (the loader checks)
- [ ] `kdbench packs validate {path}` passes
- [ ] `kdbench run {path} --seed-limit 20 --eval-limit 20` for a quick look, then the full run

Do not edit `eval/utils.py` or the task YAMLs unless you know lm-eval; they are
generated from the kdbench templates. They are code that lm-eval runs when the pack is
evaluated: outside kdbench's own `domains/` folder, `kdbench run` runs them only with
`--trust-pack-code` (or `--set trust_pack_code=true`). Standalone evaluation:

    lm_eval --model hf --model_args pretrained=PATH --include_path {path}/eval --tasks {name}_mc,{name}_qa
"""


def scaffold(name: str, parent: Path) -> Path:
    if not re.match(r"^[a-z][a-z0-9_]*$", name):
        raise PackError(f"pack name {name!r}: use lower-case letters, digits and underscores, starting with a letter")
    root = Path(parent) / name
    if root.exists() and any(root.iterdir()):
        raise PackError(f"{root} already exists and is not empty; choose another name or --dir")
    (root / "eval" / "data").mkdir(parents=True, exist_ok=True)
    spec = {
        "name": name,
        "version": "0.1.0",
        "description": f"The {name} domain (edit this description).",
        "license": "CC-BY-4.0",
        "topics": ["capitals", "rivers"],
        "teacher": {
            "system_prompt": f"You are an expert in {name}. Answer precisely and briefly.",
            "instructions": {
                "labeling": "Answer the question in one sentence.",
                "expansion": "Write one new question about {topic} in the style of the examples.",
                "curation": "Write a question and its answer about {topic}.",
                "feedback": "Judge whether the answer is correct and complete.",
            },
        },
        "elicitation": ["labeling", "expansion", "curation", "feedback", "self_knowledge", "feature"],
        "files": {"knowledge": "knowledge.jsonl", "seeds": "seeds.jsonl"},
        "eval": {
            "include_path": "eval",
            "tasks": [
                {"name": f"{name}_mc", "kind": "multiple_choice", "data": "eval/data/mc.jsonl", "metric": "acc"},
                {"name": f"{name}_qa", "kind": "generation", "data": "eval/data/qa.jsonl", "metric": "rougeL"},
            ],
        },
        "public_tasks": [],
        "generators": [],
    }
    (root / "pack.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))

    def dump(path: Path, rows: list[dict]) -> None:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    dump(
        root / "knowledge.jsonl",
        [
            {"id": f"{t}-{i:03d}", "topic": t, "question": q, "answer": a}
            for i, (t, q, a, *_ignored) in enumerate(_FACTS, 1)
        ],
    )
    dump(
        root / "seeds.jsonl",
        [
            {
                "id": f"s-{i:03d}",
                "topic": _FACTS[i // 2][0],
                "prompt": p,
                "fact": f"{_FACTS[i // 2][0]}-{i // 2 + 1:03d}",
            }
            for i, p in enumerate(_SEEDS)
        ],
    )
    dump(
        root / "eval/data/mc.jsonl",
        [
            {"id": f"mc-{i:03d}", "topic": t, "question": mq, "choices": ch, "answer": ans, "fact": f"{t}-{i:03d}"}
            for i, (t, _q, _a, mq, ch, ans) in enumerate(_FACTS, 1)
        ],
    )
    dump(
        root / "eval/data/qa.jsonl",
        [
            {
                "id": f"qa-{i:03d}",
                "topic": "capitals" if i <= 2 else "rivers",
                "question": q,
                "answer": a,
                "aliases": [],
            }
            for i, (q, a) in enumerate(_QA, 1)
        ],
    )
    write_task_files(root / "eval", name, spec["eval"]["tasks"])
    (root / "README.md").write_text(README.format(name=name, description=spec["description"], path=root))
    return root
