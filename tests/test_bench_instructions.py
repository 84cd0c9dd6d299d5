"""bench/instructions.py's arithmetic: callgrind totals read from its output format, one
request's count as the difference of two runs, and the table (valgrind itself is not run here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import instructions  # noqa: E402

CALLGRIND = """# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 7802
cmd:  python ir.py proxy 100
part: 1

events: Ir Dr I1mr Bcm
summary: 1000 400 30 7

fl=(1) ???
fn=(1) main
0 1000 400 30 7

totals: 1320 410 31 8
"""


def test_totals_are_read_by_event_name():
    assert instructions.parse_totals(CALLGRIND) == {"Ir": 1320, "Dr": 410, "I1mr": 31, "Bcm": 8}


def test_summary_is_used_when_there_are_no_totals():
    text = CALLGRIND.replace("totals: 1320 410 31 8\n", "")
    assert instructions.parse_totals(text) == {"Ir": 1000, "Dr": 400, "I1mr": 30, "Bcm": 7}


@pytest.mark.parametrize("text", ["", "events: Ir\n", "totals: 5\n", "not callgrind at all"])
def test_anything_else_is_refused(text):
    with pytest.raises(ValueError):
        instructions.parse_totals(text)


def test_one_request_is_the_difference_of_two_runs_divided_by_the_extra_requests():
    fewer = {"Ir": 1_000_000, "I1mr": 500}
    more = {"Ir": 1_000_000 + 200 * 3_300, "I1mr": 500 + 200 * 80}
    assert instructions.per_request(fewer, more, 200) == {"Ir": 3_300.0, "I1mr": 80.0}


def test_table_names_events_and_gives_proxy_over_bare():
    text = instructions.table(
        {"proxy": {"Ir": 3_300.0, "Bcm": 50.0}, "bare": {"Ir": 3_800.0, "Bcm": 0.0}}
    )
    lines = text.splitlines()
    assert lines[0] == "| event per request | proxy | bare | proxy / bare |"
    assert lines[2] == "| instructions (Ir) | 3,300 | 3,800 | 0.87x |"
    # No ratio against nothing.
    assert lines[3] == "| mispredicted conditional branches (Bcm) | 50 | 0 | - |"


def test_one_target_has_no_ratio_column():
    text = instructions.table({"proxy": {"Ir": 3_300.0}})
    assert text.splitlines()[0] == "| event per request | proxy |"
    assert text.splitlines()[2] == "| instructions (Ir) | 3,300 |"


def test_without_valgrind_it_says_how_to_get_it(capsys, tmp_path):
    assert instructions.main(["--valgrind", str(tmp_path / "no-valgrind")]) == 2
    assert "apt-get install -y valgrind" in capsys.readouterr().err
