"""astara_lab.orchestrator's pure parts: the ini text and the error translation."""
import configparser

import pytest

from astara_lab.orchestrator import AdminApiError, errors_as, ini_text


def test_ini_text_keeps_order_and_leaves_out_none_values():
    text = ini_text({"DEFAULT": {"host": "h"}, "netns": {"prefix": "p", "python": None}},
                    header="# written by a test")
    assert text == "# written by a test\n\n[DEFAULT]\nhost = h\n\n[netns]\nprefix = p\n"
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    assert dict(parser["netns"]) == {"prefix": "p", "host": "h"}


def test_errors_as_keeps_the_message():
    with pytest.raises(AssertionError, match="POST /v1/routers: 409: exists"):
        with errors_as(AssertionError):
            raise AdminApiError(409, "exists", "POST", "/v1/routers")
    with pytest.raises(KeyError):  # anything else passes through
        with errors_as(AssertionError):
            raise KeyError("x")
