"""Text from outside is data: ``pollinate.text`` bounds it and makes it one inert line."""

from __future__ import annotations

import io
import logging
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from pollinate.cli.console import InertFormatter, setup_logging
from pollinate.records import Message, check_scalars
from pollinate.text import MAX_LINE, MAX_NAME, MAX_TEXT, cap, inert, name_problem

MIB = 1 << 20


# --- cap: bounded, and saying how long it was ------------------------------------------------


def test_short_text_is_kept_as_it_is() -> None:
    assert cap("") == ""
    assert cap("x" * MAX_TEXT) == "x" * MAX_TEXT
    assert inert("accuracy 0.93 [bold]") == "accuracy 0.93 [bold]"  # markup is just text


def test_a_mebibyte_is_cut_to_the_limit_and_says_its_length() -> None:
    huge = "x" * MIB
    assert cap(huge) == "x" * MAX_TEXT + "… [1048576 chars]"
    assert inert(huge) == "x" * MAX_TEXT + "… [1048576 chars]"
    assert inert(huge, MAX_LINE) == "x" * MAX_LINE + "… [1048576 chars]"


def test_a_mebibyte_costs_what_a_kilobyte_does() -> None:
    # no timing bound to flake on a loaded machine: 1,000 GiB of text must pass at once,
    # which only holds if nothing but the kept head is read
    huge = "é" * MIB
    started = time.process_time()
    for _ in range(1000):
        inert(huge)
        cap(huge)
    assert time.process_time() - started < 60


def test_capped_text_passes_again_unchanged_and_keeps_its_original_length() -> None:
    once = inert("y" * 50_000)
    assert inert(once) == cap(once) == once
    assert inert(once, MAX_LINE) == once  # a log line quoting it keeps its mark
    assert cap(once, 10) == "y" * 10 + "… [50000 chars]"  # cut shorter: still the original


def test_text_that_ends_like_a_mark_is_kept_whole() -> None:
    assert inert("done… [3 chars]") == cap("done… [3 chars]") == "done… [3 chars]"


# --- inert: one line, control characters visible -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("line\nforged", "line\\nforged"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("\x00\x07\x7f\x9b", "\\x00\\x07\\x7f\\x9b"),
        ("para\u2028graph\u2029", "para\\u2028graph\\u2029"),
        ("evil\u202egnp.exe", "evil\\u202egnp.exe"),  # a right-to-left override
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
    ],
)
def test_control_characters_are_escaped(text: str, shown: str) -> None:
    assert inert(text) == shown
    assert inert(shown) == shown


def test_unicode_is_kept_and_counted_in_characters() -> None:
    text = "naïve 模型 🐝 Ωμέγα"
    assert inert(text) == text
    bees = "🐝" * (MAX_TEXT + 5)
    assert inert(bees) == "🐝" * MAX_TEXT + f"… [{MAX_TEXT + 5} chars]"
    inert(bees).encode("utf-8")  # always valid UTF-8, lone surrogates included
    inert("\udcff" * 10).encode("utf-8")


def test_escapes_that_lengthen_text_past_the_limit_cut_it_and_say_so() -> None:
    assert inert("\n" * 5, limit=4) == "\\n\\n… [5 chars]"


@given(st.text(max_size=3000), st.integers(1, 2000))
def test_inert_text_is_one_bounded_line_and_a_fixed_point(text: str, limit: int) -> None:
    shown = inert(text, limit)
    assert "\n" not in shown and "\r" not in shown and "\x1b" not in shown
    assert len(shown) <= limit + len(f"… [{len(text)} chars]")
    assert inert(shown, limit) == shown
    shown.encode("utf-8")


# --- names: refused, never cut ------------------------------------------------------------------


def test_names_are_refused_when_too_long_or_holding_control_characters() -> None:
    assert name_problem("m" * MAX_NAME) is None
    assert name_problem("train/loss (epoch 3)") is None
    assert name_problem("m" * (MAX_NAME + 1)) == (
        "is 257 characters long, over the limit of 256 (pollinate.text.MAX_NAME)"
    )
    assert name_problem("acc\nINFO forged") == "holds the control character \\n"


def test_two_long_names_never_collide_they_are_refused() -> None:
    a, b = "m" * 300 + "a", "m" * 300 + "b"
    with pytest.raises(ValueError, match="is 301 characters long"):
        check_scalars({a: 1.0, b: 2.0}, "fit metrics")


def test_a_message_bounds_its_text_whoever_builds_it() -> None:
    message = Message(
        "fit",
        is_reply=True,
        error="x" * MIB + "\nforged",
        metrics={"note": "y" * 5000},
        config={"lr": 0.1},
    )
    assert message.error == "x" * MAX_TEXT + f"… [{MIB + 7} chars]"
    assert message.metrics == {"note": "y" * MAX_TEXT + "… [5000 chars]"}
    with pytest.raises(ValueError, match="Message.metrics name .* holds the control character"):
        Message("fit", metrics={"a\x1b[2J": 1})


# --- logging: no highlighter, no markup, one line -----------------------------------------------


def test_the_cli_log_handler_renders_a_mebibyte_error_as_one_plain_line() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        root.handlers = []
        setup_logging(True)
        [handler] = root.handlers
        out = io.StringIO()
        handler.console = Console(file=out, width=200, highlight=False)  # type: ignore[attr-defined]
        error = Message("fit", is_reply=True, error="[red]x" * (MIB // 6) + "\nINFO forged").error
        logging.getLogger("pollinate.test").warning("node 7 failed: %s", error)
    finally:
        root.handlers, _ = saved
        root.setLevel(saved[1])
    text = out.getvalue()
    assert "[red]x[red]x" in text  # the markup is shown, not applied
    assert "\\nINFO forged" not in text and "INFO forged" not in text  # cut before it
    assert f"…[{6 * (MIB // 6) + 12}chars]" in text.replace("\n", "").replace(" ", "")
    assert len(text) < 3 * MAX_TEXT


def test_the_inert_formatter_makes_every_message_one_line() -> None:
    record = logging.LogRecord("pollinate", logging.WARNING, __file__, 1, "a %s", ("b\nc",), None)
    assert InertFormatter("%(message)s").format(record) == "a b\\nc"
