"""What the terminal shows of a run quotes nodes: as plain text, one line, never as markup."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from pollinate.cli import deploy
from pollinate.cli.render import failure_lines, round_line, summary
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


def test_the_summary_shows_metric_names_and_values_as_text() -> None:
    history = History()
    history.rounds.append(record())
    shown = "".join(rendered(line) for line in summary(history, 1.5))
    assert "[link=http://evil]acc[/link] [bold red]0.99\\n" in shown
    assert "\x1b" not in shown and "1 rounds in 1.5s" in shown


def test_the_best_round_is_the_best_accuracy_else_the_lowest_loss() -> None:
    history = History(
        [
            RoundRecord(round=0, centralized={"loss": 2.0, "accuracy": 0.1}),
            RoundRecord(round=1, centralized={"loss": 0.5, "accuracy": 0.9}),
            RoundRecord(round=2, centralized={"loss": 0.4, "accuracy": 0.8}, applied=False),
        ]
    )
    shown = [str(line) for line in summary(history, 3.0)]
    assert shown == [
        "best round: 1 (centralized accuracy 0.9000)",
        "final (round 2): centralized loss 0.4000 accuracy 0.8000",
        "2 rounds in 3.0s, 1 of them kept the previous model",
    ]
    losses = History(
        [RoundRecord(round=1, evaluate={"loss": 3.0}), RoundRecord(round=2, evaluate={"loss": 1.0})]
    )
    assert str(summary(losses, 1.0)[0]) == "best round: 2 (federated loss 1.0000)"


def test_failure_reasons_are_counted_alike_and_the_first_few_shown() -> None:
    failed = [Failure(n, "fit", f"client failed: node {n} refuses") for n in range(5)]
    failed += [Failure(9, "evaluate", "timed out"), Failure(3, "fit", "misfit [x]")]
    failed += [Failure(4, "fit", "other")]
    shown = [str(line) for line in failure_lines(RoundRecord(round=1, failed=failed))]
    assert shown == [
        "    5 x fit: client failed: node 0 refuses",
        "    1 x evaluate: timed out",
        "    1 x fit: misfit [x]",
        "    and 1 more failures for other reasons (-v shows each)",
    ]


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
