"""The embedded default: a tiny tokenizer, teacher and student built for a pack.

No hub is needed, and the models stand where a vertical-distillation study puts real ones
(Xu et al. 2024, verticalization): the student is a *general* model that lacks the domain,
the teacher one that has it.

- One BPE tokenizer over the text of kdbench's packs (``tiny.general_packs``) and the target
  pack, as a real model's tokenizer covers every domain (never evaluation items).
- The student is pretrained on the general corpus: the knowledge and seeds of the general
  packs other than the target. It answers medicine, finance and science questions and knows no
  law; its distribution is a language model's, not the near-uniform one of random weights that
  leaves every loss scaled by the student's own probability (rkl, jsd, gkd, minillm) without a
  gradient. The other packs' multiple-choice tasks then measure what distillation makes it forget.
- The teacher is trained on the target pack's knowledge (see teacher_examples).

Both are written with ``save_pretrained`` and read back by ``from_pretrained``, the path any hub
model takes, so everything downstream treats them like hub models. Results are cached under
``<home>/models/<pack>-<hash>`` (the hash covers the recipe, the config and every pack whose text
went in) and reused; both trainings checkpoint there, so a build killed part-way resumes.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from kdbench.config import TrainConfig
from kdbench.data import QUESTION_TEMPLATE, content_hash, read_done, tokenize_example, write_json
from kdbench.locks import locked
from kdbench.log import get_logger
from kdbench.models.loading import MODEL_LOCK
from kdbench.packs.loader import DomainPack, iter_pack_texts, load_pack
from kdbench.training import sft_step, train

log = get_logger(__name__)

RECIPE_VERSION = 2  # bump when the recipe changes so caches rebuild
# steps between the tiny models' training checkpoints (~10 s of training on 2 CPU cores): a build killed part-way
# resumes from the last one (the tokenizer training and the curriculum are deterministic; checkpoints change no weights)
TEACHER_SAVE_EVERY = 50
SPECIAL = {"pad": "<pad>", "unk": "<unk>", "eos": "<|end|>"}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# Each turn is <|role|>content<|end|>; generation stops at <|end|> (the eos token).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass
class TinyModels:
    teacher: str  # paths, usable as model references
    student: str
    cached: bool
    info: dict


def train_tokenizer(texts: list[str], vocab_size: int):
    """Lower-casing BPE with sentencepiece-style word boundaries (▁), as a PreTrainedTokenizerFast.

    Lower-casing and a word-start marker on every word make "Consideration" at the
    start of an answer and " consideration" mid-sentence the same token, which a
    model this small needs in order to connect facts across phrasings.
    """
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk"]))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = [SPECIAL["pad"], SPECIAL["unk"], SPECIAL["eos"], *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        min_frequency=2,
        initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation + "\n"),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL["pad"],
        unk_token=SPECIAL["unk"],
        eos_token=SPECIAL["eos"],
        additional_special_tokens=ROLE_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    return fast


def _llama(tokenizer, spec, max_positions: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with MODEL_LOCK:
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


_STOP = frozenset(
    """a an and are as at be by can for from has have how in is it its of on or that the
their this to was what when which who why with does do under than then into not no may must""".split()
)


def cue_prompts(question: str, answer: str, n: int, rng) -> list[str]:
    """n noisy cues for a fact: random halves of its content words, in order.

    A model this small trained only on a few phrasings of each question learns a
    lookup table that fails on any new wording. Training it to answer from
    partial cues (some with the key term, some without) teaches it to recall a
    fact from whichever of its words a question uses: that is what makes the
    tiny teacher know its domain rather than its prompts.
    """
    words = [w for w in (question + " " + answer).replace(",", " ").replace(".", " ").split() if w.lower() not in _STOP]
    cues = []
    for _ in range(n):
        kept = [w for w in words if rng.random() < 0.5] or words[:3]
        cues.append(" ".join(kept[:24]) + "?")
    return cues


def teacher_examples(pack: DomainPack, tokenizer, max_length: int, cues: int = 4, seed: int = 0) -> list[dict]:
    """The tiny teacher's curriculum, standing in for a teacher that knows the domain.

    Every fact as a question/answer turn, every seed that names a fact (or has a
    checkable reference) answered with it, with and without the labeling system
    prompt (elicitation asks with it, evaluation without), and ``cues`` noisy
    cue prompts per fact (see cue_prompts). Evaluation items are never used.
    """
    rng = random.Random(seed)
    system = pack.teacher_system("labeling")
    facts = {k.id: k.statement for k in pack.knowledge}
    # a plain statement (knowledge with text, no question) is learned from its cues and the seeds that name it
    plain = [(k.question, k.statement) for k in pack.knowledge if k.question]
    plain += [(c, k.statement) for k in pack.knowledge for c in cue_prompts(k.question or "", k.statement, cues, rng)]
    seeded = [(s.prompt, facts[s.fact]) for s in pack.seeds if s.fact in facts]
    seeded += [(s.prompt, f"The answer is {s.reference}.") for s in pack.seeds if s.reference and not s.fact]
    out = [tokenize_example(tokenizer, q, a, max_length=max_length) for q, a in plain + seeded]
    out += [tokenize_example(tokenizer, q, a, system=system, max_length=max_length) for q, a in seeded]
    return out


def _save(model, tokenizer, path: Path, card: dict) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "kdbench.json").write_text(json.dumps(card, indent=2))


def general_packs(pack: DomainPack, tiny) -> list[DomainPack]:
    """The packs of the general corpus for ``pack``: ``tiny.general_packs`` (names or folders) but the pack itself."""
    return [g for g in map(load_pack, tiny.general_packs) if g.name != pack.name]


def general_examples(packs: list[DomainPack], tokenizer, max_length: int, cues: int, seed: int) -> list[dict]:
    """The student's pretraining corpus: each general pack's curriculum (teacher_examples) with ``cues`` cues."""
    return [e for g in packs for e in teacher_examples(g, tokenizer, max_length, cues=cues, seed=seed)]


def models_dir(pack: DomainPack, tiny, home: Path) -> Path:
    """Where the pack's tiny models are (or will be) built: ``<home>/models/<pack>-<hash>/{teacher,student}``."""
    general = [g.train_hash for g in general_packs(pack, tiny)]
    key = content_hash(RECIPE_VERSION, pack.train_hash, general, tiny.model_dump())  # eval edits keep the models
    return Path(home) / "models" / f"{pack.name}-{key}"


def build_tiny_models(pack: DomainPack, tiny, home: Path, *, device: str = "cpu") -> TinyModels:
    """Build (or reuse) the pack's tiny tokenizer, trained teacher and pretrained student."""
    root = models_dir(pack, tiny, home)
    with locked(root):
        return _build(pack, tiny, root, root.name.removeprefix(f"{pack.name}-"), device)


def _train(model, tokenizer, examples, *, epochs, lr, batch_size, tiny, work: Path, device: str, desc: str):
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        max_length=tiny.max_positions,
        save_every=TEACHER_SAVE_EVERY,
        warmup_ratio=0.05,
        weight_decay=tiny.teacher_weight_decay,
    )
    # the work folder is kept until the models are saved: a rerun resumes its checkpoint
    result = train(
        model, tokenizer, examples, sft_step, cfg=cfg, out_dir=work, seed=tiny.seed, device=device, desc=desc
    )
    with MODEL_LOCK:
        return type(model).from_pretrained(result.model_dir), result


def _build(pack: DomainPack, tiny, root: Path, key: str, device: str) -> TinyModels:
    done = read_done(root / "DONE")
    if done is not None:
        return TinyModels(str(root / "teacher"), str(root / "student"), True, done)
    root.mkdir(parents=True, exist_ok=True)
    general = general_packs(pack, tiny)
    texts = [t for p in [pack, *general] for t in iter_pack_texts(p)]
    texts += [QUESTION_TEMPLATE.format(prompt=k.question) for p in [pack, *general] for k in p.knowledge if k.question]
    tokenizer = train_tokenizer(texts, tiny.vocab_size)
    log.info(
        f"{pack.name}: trained a tokenizer of {len(tokenizer)} tokens on {len(texts)} texts of "
        f"{', '.join(p.name for p in [pack, *general])}"
    )

    teacher = _llama(tokenizer, tiny.teacher, tiny.max_positions, tiny.seed)
    examples = teacher_examples(pack, tokenizer, tiny.max_positions, cues=tiny.teacher_cues, seed=tiny.seed)
    teacher, t_res = _train(
        teacher,
        tokenizer,
        examples,
        epochs=tiny.teacher_epochs,
        lr=tiny.teacher_lr,
        batch_size=tiny.teacher_batch_size,
        tiny=tiny,
        work=root / "teacher-train",
        device=device,
        desc=f"{pack.name}: train tiny teacher",
    )
    student = _llama(tokenizer, tiny.student, tiny.max_positions, tiny.seed + 1)
    corpus = general_examples(general, tokenizer, tiny.max_positions, tiny.student_cues, tiny.seed + 1)
    s_res = None
    if tiny.student_epochs > 0 and corpus:
        student, s_res = _train(
            student,
            tokenizer,
            corpus,
            epochs=tiny.student_epochs,
            lr=tiny.student_lr,
            batch_size=tiny.teacher_batch_size,
            tiny=tiny,
            work=root / "student-train",
            device=device,
            desc=f"{pack.name}: pretrain tiny student on {', '.join(g.name for g in general)}",
        )

    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    info = {
        "pack": pack.name,
        "data_hash": pack.data_hash,
        "recipe": RECIPE_VERSION,
        "vocab": len(tokenizer),
        "general_packs": [g.name for g in general],
        "teacher_params": n_params(teacher),
        "student_params": n_params(student),
        "teacher_final_loss": t_res.final_loss,
        "teacher_train_seconds": round(t_res.seconds, 1),
        "teacher_examples": len(examples),
        "student_pretrain_examples": len(corpus) if s_res else 0,
        "student_pretrain_final_loss": s_res.final_loss if s_res else None,
        "student_pretrain_seconds": round(s_res.seconds, 1) if s_res else 0.0,
    }
    # the card's role: "student" marks a randomly initialised student (the self-knowledge warm-up's auto reads it)
    role = "pretrained-student" if s_res else "student"
    _save(teacher, tokenizer, root / "teacher", {"fingerprint": f"{key}-teacher", "role": "teacher", **info})
    _save(student, tokenizer, root / "student", {"fingerprint": f"{key}-student", "role": role, **info})
    for work in ("teacher-train", "student-train"):
        shutil.rmtree(root / work, ignore_errors=True)
    write_json(root / "DONE", info)
    return TinyModels(str(root / "teacher"), str(root / "student"), False, info)
