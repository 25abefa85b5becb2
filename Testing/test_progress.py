"""Progress reporters and the JSON-lines contract the Slicer module parses."""

from __future__ import annotations

import io

import pytest

from RegisterByGenerationLib.progress import JsonLinesProgress, SubProgress, make_progress, parse_progress_line


def test_json_lines_round_trip():
    stream = io.StringIO()
    report = JsonLinesProgress(stream)
    report(0.25, "generate", "slices 1-4 of 16")
    report(1.0, "done")
    lines = stream.getvalue().splitlines()
    assert [parse_progress_line(line) for line in lines] == [(0.25, "generate", "slices 1-4 of 16"), (1.0, "done", "")]


@pytest.mark.parametrize("line", ["", "loading torch", "{not json", '{"stage": "x"}', '{"fraction": "a", "stage": "x"}', "[1, 2]"])
def test_other_lines_are_not_progress(line):
    assert parse_progress_line(line) is None


def test_sub_progress_maps_into_parent_range():
    seen = []
    sub = SubProgress(lambda f, s, m="": seen.append((round(f, 6), s, m)), 0.2, 0.6)
    sub(0.0, "a")
    sub(0.5, "b", "half")
    sub(2.0, "c")
    assert seen == [(0.2, "a", ""), (0.4, "b", "half"), (0.6, "c", "")]
    with pytest.raises(ValueError, match="start <= end"):
        SubProgress(None, 0.7, 0.2)


def test_make_progress_modes():
    assert isinstance(make_progress("json"), JsonLinesProgress)
    assert make_progress("none") is None
    with pytest.raises(ValueError, match="progress mode"):
        make_progress("fancy")
