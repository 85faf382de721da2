"""Bad model references, teacher endpoints and homes stop a run before any work (kdbench/preflight.py), each with
one short message naming the flag and what to pass instead."""

import json

import pytest

from kdbench.cli import main
from kdbench.config import load_config
from kdbench.errors import UserError
from kdbench.preflight import preflight


@pytest.fixture
def run_cfg(tmp_path):
    def make(**over):
        return load_config(overrides={"pack": "law", "home": str(tmp_path / "home"), **over})

    return make


def refused(cfg) -> str:
    with pytest.raises(UserError) as e:
        preflight(cfg)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_teacher_folder_that_does_not_exist(run_cfg, tmp_path):
    msg = refused(run_cfg(models={"teacher": "/nonexistent"}))
    assert (
        msg == "teacher '/nonexistent' (--teacher): no such folder /nonexistent; pass a model folder, a hub id or tiny"
    )
    assert not (tmp_path / "home").exists()


def test_folders_without_a_model_for_teacher_and_each_student(run_cfg, tmp_path, micro):
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = refused(run_cfg(models={"teacher": str(empty)}))
    assert msg.startswith(f"teacher '{empty}' (--teacher): the folder {empty} holds no model (no config.json, no ")
    assert "weights *.safetensors or pytorch_model*.bin" in msg
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text(json.dumps({"model_type": "llama"}))
    msg = refused(run_cfg(models={"teacher": micro.models.teacher, "students": ["tiny", str(config_only)]}))
    assert msg.startswith(f"student '{config_only}' (--students): the folder {config_only} holds no model (no weights,")
    a_file = config_only / "config.json"
    msg = refused(run_cfg(models={"students": [str(a_file)]}))
    assert msg.startswith(f"student '{a_file}' (--students): {a_file} is a file; pass a model folder")
    preflight(run_cfg(models={"teacher": micro.models.teacher, "students": [micro.models.student, "tiny"]}))  # fine


def test_hub_ids_are_checked_only_offline(run_cfg, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = refused(run_cfg(models={"students": ["kdbench-test/no-such-model"]}))
    assert msg.startswith(
        "student 'kdbench-test/no-such-model' (--students): no folder of that name here, and this machine is "
        "offline (HF_HUB_OFFLINE=1) with no copy of that hub model in the Hugging Face cache; pass a local model "
        "folder or tiny"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    preflight(run_cfg(models={"students": ["kdbench-test/no-such-model"]}))  # online: the hub is asked later


def test_openai_backend_needs_an_endpoint_a_key_off_this_machine_and_a_model_name(run_cfg, monkeypatch, micro):
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "KDBENCH_OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    elicit = {"backend": "openai"}
    msg = refused(run_cfg(elicit=elicit, models={"teacher": micro.models.teacher}))
    assert msg.startswith("--backend openai needs the endpoint: --set elicit.openai_base_url=URL (or OPENAI_BASE_URL)")
    remote = {**elicit, "openai_base_url": "https://api.example.com/v1"}
    msg = refused(run_cfg(elicit=remote, models={"teacher": "gpt-4o-mini"}))
    assert msg.startswith("--backend openai: api.example.com is not this machine, and no API key is set: export ")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    preflight(run_cfg(elicit=remote, models={"teacher": "gpt-4o-mini"}))
    local = {**elicit, "openai_base_url": "http://127.0.0.1:8000/v1"}
    monkeypatch.delenv("OPENAI_API_KEY")
    msg = refused(run_cfg(elicit=local, models={"teacher": micro.models.teacher}))
    assert msg.startswith(
        f"--backend openai asks the endpoint for its model by name, and --teacher '{micro.models.teacher}' is a "
        "local path: pass the name the endpoint serves with --teacher NAME or --set elicit.openai_model=NAME"
    )
    msg = refused(run_cfg(elicit=local))  # the default teacher, tiny
    assert "--teacher 'tiny' is the embedded model, which no endpoint serves" in msg
    preflight(run_cfg(elicit={**local, "openai_model": "teacher"}))  # a local server needs no key
    msg = refused(run_cfg(elicit={**elicit, "openai_base_url": "127.0.0.1:8000"}, models={"teacher": "t"}))
    assert msg == "elicit.openai_base_url '127.0.0.1:8000': not an http(s) URL, e.g. http://127.0.0.1:8000/v1"


def test_seeds_must_be_integers(tmp_path, capsys):
    assert main(["run", "law", "--seeds", "0,a", "--home", str(tmp_path / "home")]) == 2
    assert capsys.readouterr().err == (
        "kdbench: error: --seeds '0,a': seeds are comma-separated integers, e.g. --seeds 0,1,2\n"
    )
    assert not (tmp_path / "home").exists()


def test_a_home_under_a_file_is_refused(run_cfg, tmp_path):
    (tmp_path / "a-file").write_text("")
    msg = refused(run_cfg(home=str(tmp_path / "a-file" / "home")))
    assert msg == f"the home {tmp_path / 'a-file' / 'home'} (--home): {tmp_path / 'a-file'} is a file; pass a folder"
