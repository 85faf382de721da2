"""Per-item evidence behind the report's intervals and marks (kdbench/report/items.py), without MLflow:
alignment on shared item ids, rows without samples, the marking rule and what the notes say."""

import math

import numpy as np
import pandas as pd
import pytest

from kdbench import names
from kdbench.report import items
from kdbench.report.document import item_notes, mark_note, scores_table, subset_note
from kdbench.report.leaderboard import TaskInfo

TASK = TaskInfo("t_mc", "acc", 0.25, "multiple_choice", total=50)


def _mc(correct: dict[int, bool]) -> dict:
    return {"t_mc": [{"doc_id": d, "id": f"q{d:02d}", "correct": c} for d, c in correct.items()]}


def _setting(rows: dict[str, tuple[str, list[str], float]]) -> pd.DataFrame:
    """rows: label -> (role, run ids, mean score)."""
    return pd.DataFrame(
        [
            {
                "row": label,
                names.ROLE: role,
                names.TEACHER: "T",
                names.STUDENT: "S",
                "run_ids": ids,
                "seeds": len(ids),
                "t_mc.mean": mean,
                "t_mc.std": 0.0,
                "t_mc.n": len(ids),
                "t_mc.items": math.nan,
            }
            for label, (role, ids, mean) in rows.items()
        ]
    )


def test_rows_are_aligned_on_the_items_every_row_has():
    samples = {
        "t": _mc({d: d < 8 for d in range(10)}),
        "a0": _mc({d: d < 6 for d in range(10)}),
        "a1": _mc({d: d < 5 for d in range(9)}),  # this seed lost item 9
        "b0": _mc({d: d < 2 for d in range(10)}),
    }
    setting = _setting(
        {
            "teacher": (names.ROLE_TEACHER, ["t"], 0.8),
            "sft": (names.ROLE_AFTER, ["a0", "a1"], 0.58),
            "fkl": (names.ROLE_AFTER, ["b0"], 0.2),
        }
    )
    col = items.column(setting, "t_mc", "acc", samples)
    assert col.own == {"teacher": 10, "sft": 9, "fkl": 10} and col.shared == 9
    assert col.rows["sft"].shape == (2, 9) and col.rows["sft"][0].tolist() == [1.0] * 6 + [0.0] * 3
    assert col.intervals["teacher"][0] == pytest.approx(8 / 9)  # the interval is over the 9 shared items
    notes = item_notes(TASK, col)
    assert notes == [
        "t_mc acc: items are missing for some rows (items per row: teacher 10, sft 9, fkl 10); intervals and "
        "tests use the 9 items every row has, the means each row's own items."
    ]
    # not every item a row has is one id: ids come from 'id', else the doc_id
    assert items.item_key({"id": None, "doc_id": 3}) == "doc 3" and items.item_key({"id": "x"}) == "x"


def test_a_row_without_samples_has_no_interval_and_its_column_no_marks():
    samples = {"t": _mc({0: True, 1: True}), "a0": _mc({0: True, 1: False})}  # fkl's run has no samples
    setting = _setting(
        {
            "teacher": (names.ROLE_TEACHER, ["t"], 1.0),
            "sft": (names.ROLE_AFTER, ["a0"], 0.5),
            "fkl": (names.ROLE_AFTER, ["b0"], 0.9),
        }
    )
    board, ev = items.annotate(setting, [TASK], [], samples)
    col = ev.column("T", "S", "t_mc")
    assert col is not None and col.without == ["fkl"] and col.status == items.NO_SAMPLES
    assert not board["t_mc.best"].any() and np.isnan(board.loc[2, "t_mc.low"])
    assert [r[1].text for r in scores_table(board, [TASK]).rows] == [
        "100.0 [100.0, 100.0] (n=1)",
        "50.0 [0.0, 100.0] (n=1)",
        "90.0 [–] (n=1)",
    ]
    assert item_notes(TASK, col) == [
        "t_mc acc: no per-item samples for fkl, so no interval there and no significance marks in this column."
    ]
    assert mark_note(TASK, col) == ""


@pytest.mark.parametrize(
    ("fkl_right", "status", "best"),
    [
        (2, items.MARKED, ["sft"]),  # sft wins 8 items of 10 and loses none: p = 2/256
        (8, items.ALL_TIE, []),  # 2 items: p = 0.5, the only other student ties: nothing marked
    ],
)
def test_marks_follow_the_paired_test(fkl_right, status, best):
    samples = {"a": _mc(dict.fromkeys(range(10), True)), "b": _mc({d: d < fkl_right for d in range(10)})}
    setting = _setting({"sft": (names.ROLE_AFTER, ["a"], 1.0), "fkl": (names.ROLE_AFTER, ["b"], fkl_right / 10)})
    board, ev = items.annotate(setting, [TASK], [], samples)
    col = ev.column("T", "S", "t_mc")
    assert col is not None and col.status == status and col.best == best
    assert board["t_mc.best"].tolist() == [r in best for r in ("sft", "fkl")]
    note = mark_note(TASK, col)
    assert note.startswith("t_mc acc: sft is significantly better" if best else "t_mc acc: nothing marked")


def test_three_students_two_tied_for_best():
    # sft and rkl differ on 2 items (a tie), both beat fkl on 8 or more: both bold, and the note says so
    samples = {
        "a": _mc(dict.fromkeys(range(10), True)),
        "r": _mc({d: d < 8 for d in range(10)}),
        "b": _mc(dict.fromkeys(range(10), False)),
    }
    setting = _setting(
        {
            "fkl": (names.ROLE_AFTER, ["b"], 0.0),
            "rkl": (names.ROLE_AFTER, ["r"], 0.8),
            "sft": (names.ROLE_AFTER, ["a"], 1.0),
        }
    )
    _, ev = items.annotate(setting, [TASK], [], samples)
    col = ev.column("T", "S", "t_mc")
    assert col is not None and col.status == items.TIED and col.best == ["sft", "rkl"]
    assert mark_note(TASK, col) == (
        "t_mc acc: the bold cells are a tie for best: sft leads, but rkl is not significantly below it "
        "(rkl p = 0.500); fkl is (fkl p = 0.002)."
    )


def test_subset_note_from_logged_counts_or_samples():
    setting = _setting({"sft": (names.ROLE_AFTER, ["a"], 1.0)})
    assert subset_note(setting, TASK, None) == ""  # nothing says how many were scored
    setting["t_mc.items"] = 20.0
    assert subset_note(setting, TASK, None) == "t_mc acc: stratified subset of 20 of 50 items."
    setting["t_mc.items"] = 50.0
    assert subset_note(setting, TASK, None) == ""  # every item
    setting["t_mc.items"] = math.nan
    col = items.column(setting, "t_mc", "acc", {"a": _mc(dict.fromkeys(range(12), True))})
    assert subset_note(setting, TASK, col) == "t_mc acc: stratified subset of 12 of 50 items."
    assert subset_note(setting, TaskInfo("t_mc", "acc", 0.25, total=None), col) == ""  # the pack is not here
