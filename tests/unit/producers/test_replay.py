"""File replay: CSV conversion, pacing by event time, progress output (pure parts)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import orjson
import pytest

from producers.replay import (
    CSV_COLUMNS,
    Line,
    Progress,
    count_records,
    csv_lines,
    csv_row_to_json,
    event_time,
    file_lines,
    replay,
)


def test_csv_row_becomes_contract_json() -> None:
    row = ["e1", "2026-03-02T10:00:00Z", "post", "a", "", "b c", "x", "", "mastodon"]
    assert orjson.loads(csv_row_to_json(row)) == {
        "id": "e1", "ts": "2026-03-02T10:00:00Z", "kind": "post", "actor": "a",
        "mentions": ["b", "c"], "features": ["x"], "platform": "mastodon"}
    epoch = ["e2", "1772445600.5", "like", "a", "b", "", "", "p1", ""]
    assert orjson.loads(csv_row_to_json(epoch))["ts"] == 1772445600.5


def test_csv_row_with_wrong_cell_count_is_refused() -> None:
    with pytest.raises(ValueError, match="expected 9 cells"):
        csv_row_to_json(["a", "b"])


def test_csv_file_header_optional_bad_rows_dead_lettered(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text(",".join(CSV_COLUMNS) + "\n"
                    "e1,1772445600,like,a,b,,,,\n"
                    "\n"
                    "bad,row\n", encoding="utf-8")
    lines = list(csv_lines(path))
    assert [line.reason for line in lines] == [None, "invalid_csv"]
    assert lines[1].value == b"bad,row" and "line 4" in lines[1].detail
    assert count_records(path, "csv") == 2


def test_jsonl_lines_pass_through_untouched(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"id":"a"}\n{not json\n\n')
    assert [line.value for line in file_lines(path, "jsonl")] == [b'{"id":"a"}', b"{not json"]
    with pytest.raises(ValueError, match="format"):
        file_lines(path, "xml")


def test_event_time() -> None:
    assert event_time(b'{"ts": "2026-03-02T10:00:00Z"}') == 1772445600.0
    assert event_time(b'{"ts": 5}') == 5.0
    assert event_time(b"{nope") is None
    assert event_time(b'{"ts": "yesterday"}') is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def lines_at(*times: float) -> list[Line]:
    return [Line(orjson.dumps({"id": f"e{i}", "ts": t})) for i, t in enumerate(times)]


def test_paced_replay_keeps_the_spacing_over_speed() -> None:
    fake = FakeClock()
    sent: list[tuple[float, bytes]] = []
    replay(iter(lines_at(1000, 1010, 1010, 1070)), lambda v: sent.append((fake.now, v)),
           lambda line: None, speed=10, sleep=fake.sleep, clock=fake.clock)
    assert [round(t - 100.0, 6) for t, _ in sent] == [0, 1, 1, 7]


def test_fast_replay_never_sleeps_and_counts() -> None:
    fake = FakeClock()
    dead: list[Line] = []
    counts = replay(iter([*lines_at(1, 500), Line(b"x,y", "invalid_csv")]), lambda v: None,
                    dead.append, speed=None, sleep=fake.sleep, clock=fake.clock)
    assert (counts.sent, counts.dead_lettered, fake.slept) == (2, 1, [])
    assert dead[0].reason == "invalid_csv"


def test_stop_ends_a_paced_replay_early() -> None:
    fake = FakeClock()
    stop = threading.Event()
    sent: list[bytes] = []

    def send(value: bytes) -> None:
        sent.append(value)
        stop.set()  # a signal arrives after the first send

    counts = replay(iter(lines_at(0, 3600)), send, lambda line: None, speed=1, stop=stop,
                    sleep=fake.sleep, clock=fake.clock)
    assert counts.sent == 1 and len(sent) == 1


def test_progress_bar_on_a_terminal_and_lines_otherwise() -> None:
    tty = io.StringIO()
    bar = Progress(100, tty, tty=True)
    bar.update(50, force=True)
    bar.close(100)
    assert "[" in tty.getvalue() and "ETA" in tty.getvalue() and tty.getvalue().endswith("\n")
    plain = io.StringIO()
    log = Progress(100, plain, tty=False)
    log.update(25, force=True)
    assert plain.getvalue().startswith("replay: 25/100 records (25%)")
    unknown = io.StringIO()
    Progress(None, unknown, tty=False).update(7, force=True)
    assert unknown.getvalue().startswith("replay: 7 records")
