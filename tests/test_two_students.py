"""Several students: each row's summary entry and gap metrics use that row's own student-before, not the last
student's (the bug of 0.1.0's flow)."""

import pytest

from kdbench import names, steps


def _eval(role: str, model: str, acc: float, run_id: str) -> steps.Evaluation:
    return steps.Evaluation(
        role=role, model=model, metrics={"t": {"acc": acc}}, samples_path="", seconds=0.0, run_id=run_id
    )


def test_summary_line_names_each_students_own_before():
    teacher = _eval(names.ROLE_TEACHER, "T", 0.8, "rt")
    befores = [_eval(names.ROLE_BEFORE, "S0", 0.2, "r0"), _eval(names.ROLE_BEFORE, "S1", 0.6, "r1")]
    rows = [
        steps.StudentResult(
            algorithm="sft", seed=0, index=i, student=f"S{i}", model_dir="", metrics={"t": {"acc": a}}, run_id=f"a{i}"
        )
        for i, a in enumerate([0.3, 0.7])
    ]
    line = steps.summary_line("law", rows, teacher, befores, "t", "acc")
    assert line == (
        "law t.acc: teacher 0.800, student-before 0 0.200, student-before 1 0.600, "
        "sft/s0/student0 0.300, sft/s0/student1 0.700"
    )


@pytest.fixture(scope="module")
def second_student(micro, tmp_path_factory):
    """A second micro student, unlike the first: the untrained one after 30 steps on the teacher's curriculum."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdbench.config import TrainConfig
    from kdbench.models.tiny import teacher_examples
    from kdbench.training import sft_step, train

    tok = AutoTokenizer.from_pretrained(micro.models.student)
    res = train(
        AutoModelForCausalLM.from_pretrained(micro.models.student),
        tok,
        teacher_examples(micro.pack, tok, 128),
        sft_step,
        cfg=TrainConfig(max_steps=30, batch_size=8, lr=3e-3, save_every=0),
        out_dir=tmp_path_factory.mktemp("student2"),
        seed=0,
    )
    return str(res.model_dir)


@pytest.mark.slow
def test_two_students_each_row_uses_its_own_student_before(micro, second_student, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.domain import domain_flow
    from kdbench import tracking
    from kdbench.config import load_config

    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(tmp_path / "prefect-results"))
    students = [micro.models.student, second_student]
    cfg = load_config(
        overrides={
            "pack": str(micro.pack.root),
            "home": str(tmp_path / "home"),
            "report_dir": str(tmp_path / "reports"),
            "models": {"teacher": micro.models.teacher, "students": students},
            "eval": {"max_gen_toks": 8},
            "distill": {"algorithms": ["sft"], "seeds": [0], "train": {"epochs": 1, "batch_size": 4}},
            "trust_pack_code": True,  # the micro pack is outside domains/: its eval/utils.py runs when evaluated
        }
    )
    with prefect_test_harness(server_startup_timeout=180):
        domain_flow(cfg.model_dump(mode="json"))
    out = capsys.readouterr().out

    c = MlflowClient(tracking.tracking_uri(cfg))
    exp = c.get_experiment_by_name("kdbench-geo")
    assert exp is not None
    runs = c.search_runs([exp.experiment_id])
    by_role = lambda role: [r for r in runs if r.data.tags[names.tag(names.ROLE)] == role]  # noqa: E731
    (teacher,) = by_role(names.ROLE_TEACHER)
    befores = {r.data.tags[names.tag(names.STUDENT)]: r for r in by_role(names.ROLE_BEFORE)}
    afters = {r.data.tags[names.tag(names.STUDENT)]: r for r in by_role(names.ROLE_AFTER)}
    assert sorted(befores) == sorted(afters) == sorted(students)
    task = micro.pack.task_names[0]
    acc = names.metric(task, "acc")
    b = [befores[s].data.metrics[acc] for s in students]
    assert b[0] != b[1], "the two students must differ before distillation for this test to tell them apart"

    t = teacher.data.metrics[acc]
    summary = f"geo {task}.acc: teacher {t:.3f}, student-before 0 {b[0]:.3f}, student-before 1 {b[1]:.3f}, " + (
        ", ".join(f"sft/s0/student{i} {afters[s].data.metrics[acc]:.3f}" for i, s in enumerate(students))
    )
    assert summary in out

    for s in students:  # each row's gaps against its own before, and its link to that before's run
        after, before = afters[s].data, befores[s]
        assert after.tags[names.tag(names.BEFORE_RUN)] == before.info.run_id
        for key, value in before.data.metrics.items():
            closed = f"{key}.{names.GAP_CLOSED}"
            if closed in after.metrics:
                tv = teacher.data.metrics[key]
                assert after.metrics[closed] == pytest.approx((after.metrics[key] - value) / (tv - value)), closed
    closed = f"{acc}.{names.GAP_CLOSED}"
    other = befores[students[1]].data.metrics[acc]  # what the first row would show with the last student's before
    first = afters[students[0]].data.metrics
    if t != other:
        assert first[closed] != pytest.approx((first[acc] - other) / (t - other))
