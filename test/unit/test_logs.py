"""Structured log lines: the fields bound to the work in progress reach every line, in the
text and the JSON format, and stay with the thread (context) that bound them."""
import io
import json
import logging
import threading

import pytest

from astara_router import logs


@pytest.fixture
def capture():
    """A logger of its own writing through logs.make_handler into a buffer."""
    made = []

    def make(fmt):
        stream = io.StringIO()
        logger = logging.getLogger(f"test_logs.{fmt}.{len(made)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        handler = logs.make_handler(fmt, stream)
        logger.addHandler(handler)
        made.append((logger, handler))
        return logger, stream

    yield make
    for logger, handler in made:
        logger.removeHandler(handler)


def test_text_lines_carry_the_bound_fields(capture):
    logger, stream = capture("text")
    logger.info("outside")
    with logs.log_fields(request_id="req-1", generation=4) as fields:
        logger.info("applied")
        fields["generation"] = 5
        logger.info("committed with spaces: %s", "yes")
    first, second, third = stream.getvalue().splitlines()
    assert first.endswith("outside")
    assert second.endswith("applied request_id=req-1 generation=4")
    assert third.endswith("committed with spaces: yes request_id=req-1 generation=5")


def test_a_value_that_could_fake_a_field_is_quoted(capture):
    logger, stream = capture("text")
    with logs.log_fields(request_id="a b=c\nd"):
        logger.info("x")
    assert stream.getvalue().rstrip("\n").endswith('x request_id="a b=c\\nd"')


def test_json_lines_are_objects_with_the_fields(capture):
    logger, stream = capture("json")
    with logs.log_fields(request_id="req-2", generation=7):
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed %d", 3)
    entry = json.loads(stream.getvalue())
    assert (entry["message"], entry["level"], entry["request_id"], entry["generation"]) == \
        ("failed 3", "ERROR", "req-2", 7)
    assert "ValueError: boom" in entry["exception"]


def test_fields_belong_to_the_thread_that_bound_them(capture):
    logger, stream = capture("json")
    bound, done = threading.Event(), threading.Event()

    def other():
        bound.wait(5)
        logger.info("other thread")
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with logs.log_fields(request_id="req-mine"):
        bound.set()
        done.wait(5)
    thread.join(5)
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "other thread" and "request_id" not in entry


def test_request_id_grammar():
    assert logs.valid_request_id(logs.new_request_id())
    assert logs.valid_request_id("0a.b_c:d-e")
    for bad in ("", "-a", "a b", "a\nb", "x" * 129, "é"):
        assert not logs.valid_request_id(bad)


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="text, json"):
        logs.make_handler("xml")
