"""The schema of a domain pack: pack.yaml and the items of its JSONL files.

Unknown keys are errors (``extra="forbid"``) so a typo such as ``promt`` is
reported instead of silently ignored. domains/README.md lists every key.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

ELICITATION_METHODS = ("labeling", "expansion", "curation", "feedback", "self_knowledge", "feature")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherSpec(_Strict):
    system_prompt: str = Field(min_length=1)
    instructions: dict[str, str] = {}

    @field_validator("instructions")
    @classmethod
    def _known_methods(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(ELICITATION_METHODS))
        if unknown:
            raise ValueError(f"unknown elicitation method(s) {unknown}; known: {list(ELICITATION_METHODS)}")
        return v


class FilesSpec(_Strict):
    knowledge: str = "knowledge.jsonl"
    seeds: str = "seeds.jsonl"


class TaskSpec(_Strict):
    name: str
    kind: Literal["multiple_choice", "generation"]
    data: str
    metric: str = "acc"

    @field_validator("name")
    @classmethod
    def _task_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("task names are lower-case letters, digits and underscores, starting with a letter")
        return v


class EvalSpec(_Strict):
    include_path: str = "eval"
    tasks: list[TaskSpec] = Field(min_length=1)


class GeneratorSpec(_Strict):
    name: str
    count: int = Field(default=20, ge=1, le=100_000)
    seed: int = 0
    topic: str | None = None


class PackSpec(_Strict):
    name: str
    version: str
    description: str
    license: str
    topics: list[str] = Field(min_length=1)
    teacher: TeacherSpec
    elicitation: list[str] = ["labeling"]
    files: FilesSpec = FilesSpec()
    eval: EvalSpec
    public_tasks: list[str] = []
    generators: list[GeneratorSpec] = []

    @field_validator("name")
    @classmethod
    def _pack_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("pack names are lower-case letters, digits and underscores, starting with a letter")
        return v

    @field_validator("elicitation")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in ELICITATION_METHODS]
        if unknown:
            raise ValueError(f"unknown elicitation method(s) {unknown}; known: {list(ELICITATION_METHODS)}")
        return v


# ---- JSONL items ---------------------------------------------------------------


class KnowledgeItem(_Strict):
    """A fact of the domain, in one of two forms: a question with its answer, or a plain statement (``text``),
    as a data set of passages or notes gives it."""

    id: str = Field(min_length=1)
    topic: str
    question: str | None = Field(default=None, min_length=1)
    answer: str | None = Field(default=None, min_length=1)
    text: str | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, data: Any) -> Any:
        """question and answer together, or text alone; a key that is missing, extra or unknown is reported as
        that key (pydantic would stop at the first rule, so they are all checked here)."""
        if not isinstance(data, dict):
            return data
        details = [
            InitErrorDetails(type="extra_forbidden", loc=(str(k),), input=v)
            for k, v in data.items()
            if k not in cls.model_fields
        ]
        if "text" in data:
            extra = [k for k in ("question", "answer") if k in data]
            problem = "a knowledge item is a statement (text) or a question with its answer, not both; drop {keys}"
            details += [
                InitErrorDetails(
                    type=PydanticCustomError("knowledge_form", problem, {"keys": " and ".join(extra)}),
                    loc=(k,),
                    input=data[k],
                )
                for k in extra
            ]
        elif "question" in data or "answer" in data:
            details += [
                InitErrorDetails(type="missing", loc=(k,), input=data) for k in ("question", "answer") if k not in data
            ]
        else:
            missing = "missing: give the fact as text (a plain statement), or as a question and its answer"
            details.append(
                InitErrorDetails(type=PydanticCustomError("knowledge_missing", missing), loc=("text",), input=data)
            )
        if details:
            raise ValidationError.from_exception_data(cls.__name__, details)
        return data

    @property
    def statement(self) -> str:
        """What the fact says, as a passage: its answer (the shipped packs answer in full sentences) or text."""
        return self.answer if self.answer is not None else self.text or ""

    @property
    def texts(self) -> list[str]:
        """Every text of the item: question and answer, or the statement."""
        return [t for t in (self.question, self.answer, self.text) if t is not None]

    @property
    def content(self) -> str:
        """The item as one text, for decontamination: question and answer, or the statement."""
        return " ".join(self.texts)


class SeedItem(_Strict):
    id: str = Field(min_length=1)
    topic: str
    prompt: str = Field(min_length=1)
    fact: str | None = None
    # A checkable answer (generators): lets feedback and self-knowledge verify
    # outputs without a teacher.
    reference: str | None = None
    check: Literal["numeric", "text"] | None = None
    # A reference answer written by a person (optional): the `gold` row trains on these, without a teacher.
    answer: str | None = Field(default=None, min_length=1)


class MCItem(_Strict):
    id: str = Field(min_length=1)
    topic: str
    question: str = Field(min_length=1)
    choices: list[str] = Field(min_length=2)
    answer: int
    fact: str | None = None

    @field_validator("choices")
    @classmethod
    def _distinct_choices(cls, v: list[str]) -> list[str]:
        """lm-eval scores each choice by its likelihood: an empty one is no choice, and two equal ones tie."""
        seen: dict[str, int] = {}
        for i, choice in enumerate(v):
            norm = " ".join(choice.split()).casefold()
            if not norm:
                raise ValueError(f"choice {i} is empty; every choice is a term or a short phrase")
            if norm in seen:
                raise ValueError(f"choices {seen[norm]} and {i} are the same ({choice!r}); each choice must differ")
            seen[norm] = i
        return v

    @field_validator("answer", mode="before")
    @classmethod
    def _answer_index(cls, v: Any, info) -> Any:
        choices = info.data.get("choices")
        span = f"0..{len(choices) - 1}" if choices is not None else "0, 1, ..."
        if type(v) is not int:  # bool is an int to Python, and pydantic would take "0": neither is an index
            kind = {bool: "true/false", str: f"the string {v!r}", float: f"the number {v!r}"}.get(type(v), repr(v))
            raise ValueError(
                f"answer must be the index of the right choice as a JSON integer ({span}), not {kind}: "
                'write "answer": 0, not "answer": "0" or true'
            )
        if choices is not None and not 0 <= v < len(choices):
            raise ValueError(f"answer must index choices ({span}), got {v}")
        return v

    @property
    def text(self) -> str:
        """The item as decontamination sees it: the question and its right answer."""
        return f"{self.question} {self.choices[self.answer]}"


class QAItem(_Strict):
    id: str = Field(min_length=1)
    topic: str
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    aliases: list[str] = []
    fact: str | None = None

    @property
    def text(self) -> str:
        return f"{self.question} {self.answer}"


ITEM_MODELS = {"multiple_choice": MCItem, "generation": QAItem}
