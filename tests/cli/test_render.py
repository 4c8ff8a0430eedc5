"""What the terminal shows of a run quotes nodes: as plain text, one line, never as markup."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from pollinate.cli import deploy
from pollinate.cli.render import round_line, summary_table
from pollinate.loop.history import Failure, History, RoundRecord

HOSTILE_NAME = "[link=http://evil]acc[/link]"
HOSTILE_VALUE = "[bold red]0.99\n[12/06/26 15:00:00] INFO     forged line\x1b[2J"


def rendered(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(renderable)
    return out.getvalue()


def record() -> RoundRecord:
    return RoundRecord(
        round=1,
        replies=1,
        failures=1,
        evaluate={HOSTILE_NAME: HOSTILE_VALUE, "loss": 0.5},
        failed=[Failure(7, "fit", "client failed: " + "x" * (1 << 20))],
    )


def test_the_round_line_shows_metric_names_and_values_as_text_on_one_line() -> None:
    shown = rendered(round_line(record()))
    assert "[link=http://evil]acc[/link] [bold red]0.99\\n[12/06/26 15:00:00]" in shown
    assert "\\x1b[2J" in shown and "\x1b" not in shown
    assert shown.count("\n") == 1


def test_the_summary_table_shows_metric_names_and_values_as_text() -> None:
    history = History()
    history.rounds.append(record())
    shown = rendered(summary_table(history, width=200))
    assert "[link=http://evil]acc[/link]" in shown
    assert "[bold red]0.99" in shown and "\x1b" not in shown


def test_a_failure_reason_is_kept_cut_and_says_its_length() -> None:
    [failure] = record().failed
    assert failure.reason == "client failed: " + "x" * 3985 + f"… [{(1 << 20) + 15} chars]"
    again = RoundRecord.from_dict(json.loads(json.dumps(record().to_dict())))
    assert again.failed[0].reason == failure.reason


@pytest.mark.parametrize("kind", ["log", "status", "resume"])
def test_pollinate_log_prints_each_line_as_plain_text(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(deploy, "console", Console(file=out, width=400, color_system=None))
    deploy._print_line(kind, f"node 7 failed: {HOSTILE_VALUE}")
    assert out.getvalue() == (
        "node 7 failed: [bold red]0.99\\n[12/06/26 15:00:00] INFO     forged line\\x1b[2J\n"
    )
