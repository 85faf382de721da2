"""N-gram decontamination between evaluation items and training text.

An evaluation item is *contaminated* when it shares a run of ``n`` consecutive
words with the training side (seed prompts, elicited examples). Text is
normalised by lower-casing and replacing every non-alphanumeric character with a
space, so punctuation and case do not hide a copy. n = 8 by default: long enough
that shared domain phrases ("the statute of frauds") do not trigger it, short
enough that a near-verbatim copy of an item does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_N = 8
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def words(text: str) -> list[str]:
    return _NON_ALNUM.sub(" ", text.lower()).split()


def ngrams(text: str, n: int = DEFAULT_N) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


class NgramIndex:
    """The n-grams of a set of evaluation texts, to test training text against."""

    def __init__(self, items: dict[str, str], n: int = DEFAULT_N):
        self.n = n
        self._owner: dict[tuple[str, ...], str] = {}
        for item_id, text in items.items():
            for g in ngrams(text, n):
                self._owner.setdefault(g, item_id)

    def overlaps(self, text: str) -> list[str]:
        """Ids of the evaluation items that share an n-gram with ``text``."""
        return sorted({self._owner[g] for g in ngrams(text, self.n) if g in self._owner})


@dataclass
class DecontamReport:
    """What a decontamination pass found: which training rows hit which items."""

    n: int
    checked: int = 0
    hits: dict[str, list[str]] = field(default_factory=dict)  # training id -> eval ids

    @property
    def rate(self) -> float:
        """Fraction of training rows that overlap some evaluation item."""
        return len(self.hits) / self.checked if self.checked else 0.0


def check(train: Iterable[tuple[str, str]], index: NgramIndex) -> DecontamReport:
    """Test (id, text) training rows against an index of evaluation items."""
    report = DecontamReport(n=index.n)
    for row_id, text in train:
        report.checked += 1
        found = index.overlaps(text)
        if found:
            report.hits[row_id] = found
    return report
