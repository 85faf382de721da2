"""An append-only, crash-safe cache of generations, keyed by content hash.

Each finished batch is appended and fsync'ed, so a killed run loses at most the
batch in flight and a rerun skips every request already answered. A line cut
short by a crash, or otherwise unreadable, is skipped with a warning (its
request is simply asked again); the rest of the file stays usable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kdbench.log import get_logger

log = get_logger(__name__)


class GenerationCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._data: dict[str, str] = {}
        self.skipped_lines = 0
        if self.path.exists():
            with self.path.open(encoding="utf-8", errors="replace") as f:
                for _lineno, line in enumerate(f, 1):
                    try:
                        row = json.loads(line)
                        self._data[row["key"]] = row["output"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.skipped_lines += 1
            if self.skipped_lines:
                log.warning(
                    f"{self.path}: skipped {self.skipped_lines} unreadable line(s) "
                    "(an interrupted write?); those requests will be generated again"
                )
                self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for k, v in self._data.items():
                f.write(json.dumps({"key": k, "output": v}, ensure_ascii=False) + "\n")
        tmp.replace(self.path)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def put_many(self, pairs: list[tuple[str, str]]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for k, v in pairs:
                f.write(json.dumps({"key": k, "output": v}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._data.update(pairs)
