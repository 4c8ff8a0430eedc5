"""How many replies a second the hub's journal records with N writers at once (issue 20).

A hub records every reply before the node hears "accepted" (``Journal.record``): its bytes
in a file, fsynced; the file's name, with an fsync of its folder; the reply noted against
its task in SQLite (synchronous=FULL: an fsync of the WAL). The hub's 16 threads record the
replies of a round as they come. Two paths are measured in turn, in the same run, on the same
disk:

- one by one (the journal before 2026-12-07): each reply writes its file, fsyncs its folder
  and commits its own transaction; the commits queue behind the state's lock;
- grouped (``Journal.record`` now): each reply writes and fsyncs its file in its own thread,
  then the replies waiting at that moment share one folder fsync and one transaction
  (``hub/group_commit.py``).

For each number of writers (threads, each recording the next reply of a shared list until
none is left), ``--replies`` replies of a 10-parameter model (the app of ``fleet.py``) to
tasks opened beforehand, into a fresh data dir under ``--dir``. Printed: replies a second for
each path (best of ``--repeat``), the ratio, and how many transactions the grouped path used.

    .venv/bin/python benchmarks/journal.py                 # about a minute
    .venv/bin/python benchmarks/journal.py --writers 16 --replies 1000
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

from pollinate.hub.journal import Journal
from pollinate.hub.state import HubState
from pollinate.records import Arrays, Message
from pollinate.wire import iter_encode


def record_one_by_one(journal: Journal, reply: Message) -> bool:
    """What ``Journal.record`` did before the group commit, for a task with no reply yet."""
    task = journal.task(reply.task_id)
    if task is None or task.reply is not None:
        return False
    path = journal._reply_path(reply)
    journal.state.write_file(path, iter_encode(reply))  # file fsync, folder fsync
    with journal.state.transaction() as db:  # a commit of its own
        updated = db.execute(
            "UPDATE tasks SET reply = ? WHERE task_id = ? AND reply IS NULL",
            (str(path), reply.task_id),
        )
        return updated.rowcount == 1


def tasks(count: int) -> list[Message]:
    arrays = Arrays({"w": np.ones(10, np.float32)})
    return [
        Message("fit", task_id=f"t{i}", run_id="bench", round=1, node_id=i, arrays=arrays)
        for i in range(count)
    ]


def replies_per_second(
    root: Path, writers: int, count: int, record: Callable[[Journal, Message], bool]
) -> tuple[float, int]:
    """Replies a second with ``writers`` threads recording ``count`` replies in a fresh data
    dir, and how many transactions they took."""
    with tempfile.TemporaryDirectory(dir=root) as data_dir:
        state = HubState(data_dir)
        try:
            journal = Journal(state)
            sent = tasks(count)
            journal.open(sent)
            todo = [task.reply(arrays=task.arrays, num_examples=10) for task in sent]
            transactions = count_transactions(state)
            left = iter(todo)
            lock = threading.Lock()

            def write() -> None:
                while True:
                    with lock:
                        reply = next(left, None)
                    if reply is None:
                        return
                    assert record(journal, reply), f"{reply.task_id} was not recorded"

            threads = [threading.Thread(target=write) for _ in range(writers)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - start
        finally:
            state.close()
    return count / seconds, len(transactions)


def count_transactions(state: HubState) -> list[None]:
    """A list that grows by one with each transaction the state begins from now on."""
    begun: list[None] = []
    transaction = state.transaction

    def counted() -> AbstractContextManager[object]:
        begun.append(None)
        return transaction()

    state.transaction = counted  # type: ignore[method-assign]
    return begun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--replies", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    print(f"{args.replies} replies of 10 float32 parameters, best of {args.repeat}, in {args.dir}")
    print(f"{'writers':>7} {'one by one/s':>12} {'grouped/s':>10} {'ratio':>6} {'commits':>8}")
    for writers in args.writers:
        old, new, commits = 0.0, 0.0, 0
        for _ in range(args.repeat):  # in turn: both paths see the same load
            rate, _ = replies_per_second(args.dir, writers, args.replies, record_one_by_one)
            old = max(old, rate)
            rate, commits = replies_per_second(args.dir, writers, args.replies, Journal.record)
            new = max(new, rate)
        print(f"{writers:>7} {old:>12.0f} {new:>10.0f} {new / old:>5.1f}x {commits:>8}")


if __name__ == "__main__":
    main()
