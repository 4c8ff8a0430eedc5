"""Group commit (hub/group_commit.py): callers in many threads share one commit.

Each test names an invariant of the module: every caller gets its own item's result (or its
commit's exception), one commit runs at a time, and a lone caller commits at once, in its own
thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from pollinate.hub.group_commit import GroupCommit

TIMEOUT = 10.0


def poll(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.001)


class Calls:
    """Threads that each call a GroupCommit once; what each was given back."""

    def __init__(self, group: GroupCommit[int, int], items: list[int]) -> None:
        self.got: dict[int, int | BaseException] = {}
        self.threads = [threading.Thread(target=self._call, args=(group, i)) for i in items]
        for thread in self.threads:
            thread.start()

    def _call(self, group: GroupCommit[int, int], item: int) -> None:
        try:
            self.got[item] = group(item)
        except Exception as exc:
            self.got[item] = exc

    def join(self) -> dict[int, int | BaseException]:
        for thread in self.threads:
            thread.join(TIMEOUT)
        assert not any(thread.is_alive() for thread in self.threads), "a caller never returned"
        return self.got


class HeldCommit:
    """A commit that records its batches and holds the first one until ``release()``."""

    def __init__(self, fail_first: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_at_once = 0
        self.first_started, self._released = threading.Event(), threading.Event()
        self.fail_first = fail_first

    def __call__(self, items: list[int]) -> list[int]:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.batches.append(sorted(items))
        first = len(self.batches) == 1
        if first:
            self.first_started.set()
            assert self._released.wait(TIMEOUT), "the test never released the first commit"
        self.running -= 1
        if first and self.fail_first:
            raise OSError("the disk refused the first commit")
        return [item * 10 for item in items]

    def release(self) -> None:
        self._released.set()


def test_a_lone_caller_commits_its_item_at_once_in_its_own_thread() -> None:
    threads: list[int] = []

    def commit(items: list[str]) -> list[str]:
        threads.append(threading.get_ident())
        return [item.upper() for item in items]

    group = GroupCommit(commit)
    assert group("a") == "A"
    assert group("b") == "B"
    assert threads == [threading.get_ident()] * 2  # no linger, no thread of its own


def test_callers_that_arrive_during_a_commit_share_the_next_one_and_each_gets_its_result() -> None:
    commit = HeldCommit()
    group = GroupCommit(commit)
    first = Calls(group, [1])
    assert commit.first_started.wait(TIMEOUT)
    others = Calls(group, list(range(2, 30)))
    poll(lambda: len(group._waiting) == 28)  # all of them wait behind the first commit

    commit.release()

    assert first.join() == {1: 10}
    assert others.join() == {i: i * 10 for i in range(2, 30)}
    assert commit.batches == [[1], list(range(2, 30))]
    assert commit.most_at_once == 1  # one commit at a time


def test_many_callers_at_once_each_get_their_own_result() -> None:
    commits: list[int] = []

    def commit(items: list[int]) -> list[int]:
        commits.append(len(items))
        time.sleep(0.001)  # a commit takes a while, as an fsync does
        return [-item for item in items]

    calls = Calls(GroupCommit(commit), list(range(200)))
    assert calls.join() == {i: -i for i in range(200)}
    assert sum(commits) == 200  # each item committed once


def test_a_failed_commit_fails_every_caller_it_took_and_the_next_commit_goes_on() -> None:
    commit = HeldCommit(fail_first=True)
    group = GroupCommit(commit)
    first = Calls(group, [1])
    assert commit.first_started.wait(TIMEOUT)
    later = Calls(group, [2, 3])
    poll(lambda: len(group._waiting) == 2)

    commit.release()

    failed = first.join()[1]
    assert isinstance(failed, OSError) and "refused" in str(failed)
    assert later.join() == {2: 20, 3: 30}
    assert group(4) == 40


def test_a_commit_that_answers_for_too_few_items_fails_its_callers_instead_of_hanging() -> None:
    group: GroupCommit[int, int] = GroupCommit(lambda items: [])
    with pytest.raises(ValueError):
        group(1)
    assert group._committing is False
