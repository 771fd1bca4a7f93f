"""The function log store (what ``llmfn logs`` reads): lines come back in order
with their request ids, filtered and bounded; a store that cannot be written
drops lines with one warning and never raises. And the JSON log format."""
from __future__ import annotations

import io
import json
import logging
import stat
import time

import pytest

from runtime import log_format
from runtime.cli.logs import parse_since
from runtime.functions.logs import LogLine, LogStore, read_lines


def _store(tmp_path, **kw) -> LogStore:
    return LogStore(tmp_path / "logs.sqlite3", **{"max_lines": 1000, "max_age_s": 86400, **kw})


def test_lines_come_back_in_order_with_request_id_and_version(tmp_path):
    store = _store(tmp_path)
    store.append(LogLine("Fn", "START RequestId: r1 Version: 2", "r1", 2))
    store.append(LogLine("Fn", "hello from the handler", "r1", 2))
    store.append(LogLine("Other", "not mine", "r2"))
    store.append(LogLine("Fn", "init line", None, 2))
    store.close()
    lines = list(read_lines(tmp_path / "logs.sqlite3", "Fn"))
    assert [(ln.message, ln.request_id, ln.version) for ln in lines] == [
        ("START RequestId: r1 Version: 2", "r1", 2), ("hello from the handler", "r1", 2), ("init line", None, 2)]
    assert stat.S_IMODE((tmp_path / "logs.sqlite3").stat().st_mode) == 0o600


def test_since_filter_and_after_id_select_lines(tmp_path):
    store = _store(tmp_path)
    now = time.time()
    store.append(LogLine("Fn", "old ERROR", "r0", time=now - 3600))
    store.append(LogLine("Fn", "new ERROR", "r1", time=now))
    store.append(LogLine("Fn", "new error in lower case", "r1", time=now))
    store.append(LogLine("Fn", "100% [x]", "r2", time=now))
    store.close()
    path = tmp_path / "logs.sqlite3"
    assert [ln.message for ln in read_lines(path, "Fn", since=now - 60)] == [
        "new ERROR", "new error in lower case", "100% [x]"]
    assert [ln.message for ln in read_lines(path, "Fn", contains="ERROR")] == ["old ERROR", "new ERROR"]
    assert [ln.message for ln in read_lines(path, "Fn", contains="% [")] == ["100% [x]"]  # no wildcards
    first = next(read_lines(path, "Fn"))
    assert [ln.message for ln in read_lines(path, "Fn", after_id=first.id)][0] == "new ERROR"


def test_the_store_keeps_at_most_the_retained_lines_per_function(tmp_path):
    store = _store(tmp_path, max_lines=5)
    for i in range(40):
        store.append(LogLine("Chatty", f"line {i}", f"r{i}"))
    store.append(LogLine("Quiet", "the nightly failure", "q"))
    store.close()
    path = tmp_path / "logs.sqlite3"
    assert [ln.message for ln in read_lines(path, "Chatty")] == [f"line {i}" for i in range(35, 40)]
    assert [ln.message for ln in read_lines(path, "Quiet")] == ["the nightly failure"]
    store = _store(tmp_path, max_lines=5)  # and stays bounded across restarts
    for i in range(40, 50):
        store.append(LogLine("Chatty", f"line {i}", f"r{i}"))
    store.close()
    assert [ln.message for ln in read_lines(path, "Chatty")] == [f"line {i}" for i in range(45, 50)]


def test_the_store_drops_lines_older_than_the_retention(tmp_path):
    store = _store(tmp_path, max_age_s=60)
    store.append(LogLine("Fn", "a week ago", "r0", time=time.time() - 7 * 86400))
    store.append(LogLine("Fn", "just now", "r1"))
    store.close()
    assert [ln.message for ln in read_lines(tmp_path / "logs.sqlite3", "Fn")] == ["just now"]


def test_a_store_that_cannot_be_written_drops_lines_with_one_warning(tmp_path, caplog):
    store = LogStore(tmp_path / "missing" / "logs.sqlite3", max_lines=10, max_age_s=60)
    with caplog.at_level(logging.WARNING, logger="llmfn.functions"):
        for i in range(3):
            store.append(LogLine("Fn", f"line {i}", "r"))  # never raises
            time.sleep(0.05)
        store.close()
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1


def test_reading_a_store_that_does_not_exist_gives_no_lines(tmp_path):
    assert list(read_lines(tmp_path / "logs.sqlite3", "Fn")) == []


@pytest.mark.parametrize(("text", "ago"), [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1.5h", 5400)])
def test_since_takes_a_duration_ago(text, ago):
    assert parse_since(text, now=1_000_000.0) == 1_000_000.0 - ago


def test_since_takes_an_iso_time_in_utc_unless_it_names_a_zone():
    assert parse_since("2026-01-02T03:04:05") == 1767323045.0
    assert parse_since("2026-01-02T03:04:05Z") == 1767323045.0
    assert parse_since("2026-01-02T04:04:05+01:00") == 1767323045.0
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


@pytest.fixture
def json_format():
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    formatters = [(h, h.formatter) for h in root.handlers]
    log_format.configure("json")
    yield handler
    log_format.configure("text")
    for h, formatter in formatters:
        h.setFormatter(formatter)
    root.removeHandler(handler)


def test_json_format_writes_records_and_function_lines_as_json_objects(json_format, capsys):
    logging.getLogger("llmfn.test").warning("pool %s is cold", "m1")
    log_format.say("llmfn gateway on http://127.0.0.1:1")
    log_format.function_line(1767323045.5, "Fn", "r1", 3, "hello")
    written = json_format.stream.getvalue() + capsys.readouterr().err
    lines = [json.loads(line) for line in written.splitlines()]
    assert lines[0] == {"time": lines[0]["time"], "level": "WARNING", "logger": "llmfn.test",
                        "message": "pool m1 is cold"}
    assert lines[1]["message"] == "llmfn gateway on http://127.0.0.1:1" and lines[1]["level"] == "INFO"
    assert lines[2] == {"time": "2026-01-02T03:04:05.500Z", "function": "Fn", "request_id": "r1",
                        "version": 3, "message": "hello"}


def test_text_format_writes_function_lines_as_written(capsys):
    log_format.function_line(1767323045.5, "Fn", "r1", 3, "START RequestId: r1 Version: 3")
    assert capsys.readouterr().err == "START RequestId: r1 Version: 3\n"
