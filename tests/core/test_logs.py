"""route_logs: one job's remote output into another logger, with real loggers and records."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator

import pytest
import tasks

from meadow_core import LocalHost, Outcome, route_logs, run_function_sync
from meadow_core.protocol import TaskOutcome
from meadow_core.watch import JobWatch


class _Keep(logging.Handler):
    """A handler that keeps what reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def meadow_log() -> Iterator[_Keep]:
    """What reaches the ``meadow`` logger's handlers, i.e. what no route took."""
    logger = logging.getLogger("meadow")
    saved = (logger.level, list(logger.filters), logger.disabled)
    keep = _Keep()
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    yield keep
    logger.removeHandler(keep)
    logger.setLevel(saved[0])
    logger.disabled = saved[2]
    assert logger.filters == saved[1], "a route was left on the meadow logger"


def _target() -> tuple[logging.Logger, _Keep]:
    logger = logging.getLogger(f"test.target.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    keep = _Keep()
    logger.addHandler(keep)
    return logger, keep


def test_one_jobs_lines_go_to_the_target_and_only_there(meadow_log: _Keep) -> None:
    mine, other = JobWatch("job-mine", 1, "function"), JobWatch("job-other", 1, "function")
    target, into = _target()
    with route_logs("job-mine", target):
        mine.on_log(0, 1, ["first", "second"])
        other.on_log(0, 1, ["not mine"])
    assert into.messages == ["first", "second"]
    assert all(r.levelno == logging.INFO for r in into.records)
    assert meadow_log.messages == ["not mine"]


def test_the_route_ends_with_the_block(meadow_log: _Keep) -> None:
    watch = JobWatch("job-ends", 1, "function")
    target, into = _target()
    before = list(logging.getLogger("meadow").filters)
    with pytest.raises(RuntimeError), route_logs("job-ends", target):
        watch.on_log(0, 1, ["inside"])
        raise RuntimeError("the step failed")
    assert logging.getLogger("meadow").filters == before
    watch.on_log(0, 1, ["after"])
    assert into.messages == ["inside"]
    assert meadow_log.messages == ["after"]


def test_a_callable_gets_the_record_with_its_task_and_attempt(meadow_log: _Keep) -> None:
    watch = JobWatch("job-map", 5, "map")
    records: list[logging.LogRecord] = []
    with route_logs("job-map", records.append):
        watch.on_log(3, 2, ["element output"])
    (record,) = records
    assert record.getMessage() == "[task 3] element output"
    assert record.name == "meadow"
    assert (record.meadow_job_id, record.meadow_task_id, record.meadow_attempt) == (  # type: ignore[attr-defined]
        "job-map",
        3,
        2,
    )
    assert meadow_log.records == []


def test_retry_notices_are_routed_as_warnings(meadow_log: _Keep) -> None:
    watch = JobWatch("job-retry", 1, "function")
    target, into = _target()
    with route_logs("job-retry", target):
        watch.on_result(
            TaskOutcome(
                "job-retry", 0, 1, Outcome.CRASHED, final=False, error=["meadow.X", "died", ""]
            )
        )
    (record,) = into.records
    assert record.levelno == logging.WARNING and "retrying" in record.getMessage()
    assert meadow_log.records == []


def test_job_id_collections_and_predicates_select(meadow_log: _Keep) -> None:
    watches = {job: JobWatch(job, 2, "map") for job in ("a", "b", "c")}
    by_ids: list[str] = []
    first_tasks: list[str] = []
    with (
        route_logs({"a", "b"}, lambda r: by_ids.append(r.getMessage())),
        route_logs(
            lambda r: r.meadow_job_id == "c" and r.meadow_task_id == 0,  # type: ignore[attr-defined]
            lambda r: first_tasks.append(r.getMessage()),
        ),
    ):
        for job, watch in watches.items():
            watch.on_log(0, 1, [job])
            watch.on_log(1, 1, [job])
    assert by_ids == ["[task 0] a", "[task 1] a", "[task 0] b", "[task 1] b"]
    assert first_tasks == ["[task 0] c"]
    assert meadow_log.messages == ["[task 1] c"]


def test_every_route_that_selects_a_record_gets_it(meadow_log: _Keep) -> None:
    watch = JobWatch("job-twice", 1, "function")
    outer: list[str] = []
    inner: list[str] = []
    with route_logs("job-twice", lambda r: outer.append(r.getMessage())):
        with route_logs("job-twice", lambda r: inner.append(r.getMessage())):
            watch.on_log(0, 1, ["both"])
        watch.on_log(0, 1, ["outer only"])
    assert outer == ["both", "outer only"] and inner == ["both"]
    assert meadow_log.records == []


def test_routes_work_whatever_the_meadow_loggers_level(meadow_log: _Keep) -> None:
    watch, other = JobWatch("job-quiet", 1, "function"), JobWatch("job-x", 1, "function")
    meadow_logger = logging.getLogger("meadow")
    target, into = _target()
    with route_logs("job-quiet", target):
        meadow_logger.setLevel(logging.WARNING)
        watch.on_log(0, 1, ["below the level"])
        other.on_log(0, 1, ["dropped as before"])
        meadow_logger.setLevel(logging.INFO)
        meadow_logger.disabled = True  # what dictConfig does to loggers it did not name
        watch.on_log(0, 1, ["logger disabled"])
        other.on_log(0, 1, ["dropped too"])
    assert into.messages == ["below the level", "logger disabled"]
    assert meadow_log.records == []


def test_a_failing_target_breaks_nothing(
    meadow_log: _Keep, capsys: pytest.CaptureFixture[str]
) -> None:
    watch = JobWatch("job-broken", 1, "function")
    seen: list[str] = []

    def broken(record: logging.LogRecord) -> None:
        raise ValueError("the orchestrator's logger is gone")

    with (
        route_logs("job-broken", broken),
        route_logs("job-broken", lambda r: seen.append(r.getMessage())),
    ):
        watch.on_log(0, 1, ["still delivered"])
    assert seen == ["still delivered"]
    assert "the orchestrator's logger is gone" in capsys.readouterr().err
    assert meadow_log.records == []


def test_a_target_must_be_a_logger_or_a_callable() -> None:
    with pytest.raises(TypeError, match="logger or a callable"), route_logs("j", "stderr"):  # type: ignore[arg-type]
        pass


def test_routes_from_many_threads(meadow_log: _Keep) -> None:
    """Steps of an orchestrator route their own jobs at once, each from its own thread."""
    start = threading.Barrier(8)
    received: dict[int, list[str]] = {}

    def step(n: int) -> None:
        watch = JobWatch(f"job-thread-{n}", 1, "function")
        lines: list[str] = []
        received[n] = lines
        start.wait()
        for round_ in range(20):
            with route_logs(f"job-thread-{n}", lambda r: lines.append(r.getMessage())):
                watch.on_log(0, 1, [f"{n}.{round_}.{i}" for i in range(10)])

    threads = [threading.Thread(target=step, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n, lines in received.items():
        assert lines == [f"{n}.{r}.{i}" for r in range(20) for i in range(10)]
    assert meadow_log.records == []


def test_a_real_jobs_output_is_routed(host: LocalHost, meadow_log: _Keep) -> None:
    tag = uuid.uuid4().hex
    job_id = f"job-routed-{tag}"
    target, into = _target()
    with route_logs(job_id, target):
        assert run_function_sync(tasks.chatty, host=host, args=(tag,), job_id=job_id) == tag
    for line in (f"stdout line {tag}", f"stderr line {tag}", f"c-level line {tag}"):
        assert any(line in message for message in into.messages), into.messages
    assert not any(tag in message for message in meadow_log.messages)
