"""The import's progress lines when stderr is not a terminal: one per interval, and a final one
only when it says something new."""

from __future__ import annotations

import io

from unimeter.cli.transfer import Progress


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_the_final_line_does_not_repeat_the_last_one() -> None:
    out = io.StringIO()
    progress = Progress(3, out, enabled=True, interval_s=60.0)
    progress.update(3)  # the first update is always shown
    progress.update(3, final=True)
    assert len(_lines(out)) == 1 and _lines(out)[0].startswith("imported 3/3 events (100%)")


def test_the_final_line_is_shown_when_it_is_new() -> None:
    out = io.StringIO()
    progress = Progress(10, out, enabled=True, interval_s=60.0)
    progress.update(4)
    progress.update(7)  # within the interval: not shown
    progress.update(10, final=True)
    lines = _lines(out)
    assert [line.split(" events")[0] for line in lines] == ["imported 4/10", "imported 10/10"]


def test_no_lines_when_disabled() -> None:
    out = io.StringIO()
    progress = Progress(5, out, enabled=False)
    progress.update(5, final=True)
    assert out.getvalue() == ""
