"""What a reply costs on its way from the hub to its run's process (``hub/channel.py``).

Every reply a node sends crosses once more, from the hub to the run process that aggregates
it, over their socketpair. Measured in one process with two threads (so CPU time counts both
ends), for ``--replies`` replies of a model of ``--parameters`` float32 values:

- "frames": the channel as it was until 2026-12-07, every message in 4 MiB CHUNK frames
  through the socket (a copy into the kernel, one out into a fresh frame, one into the
  growing message);
- "mapped": the channel now: a message of 1 MiB or more written once into a sealed memfd,
  which the receiver maps (``hub/sealed.py``);
- "file": the reply as the journal wrote it (a file in ``--dir``, written once beforehand:
  the hub writes it anyway), its descriptor sent, the file mapped (the hub's path for
  replies now);
- "socket": the baseline, the same bytes through the same kind of socketpair with 4 MiB
  ``sendall`` / ``recv_into`` into one buffer the receiver reuses: one copy each way, no
  fresh memory, no framing.

The receiver decodes each message (``wire.decode``, zero-copy) and reads one value of
every page of its arrays, as the run's aggregation would. Printed: wall and CPU seconds
(best of ``--repeat``) and the ratio of CPU to the baseline's.

    .venv/bin/python benchmarks/channel.py                # 10 replies of 40 MB, ~10 s
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import pollinate.wire as wire
from pollinate.hub import channel
from pollinate.records import Arrays, Message, MessageKind

FRAMES = 4 << 20


def through_channel(reply: Message, count: int, mapped: bool) -> None:
    a, b = socket.socketpair()
    sender = channel.Channel(a, max_json=1 << 20, max_message=1 << 40)
    receiver = channel.Channel(b, max_json=1 << 20, max_message=1 << 40)
    if not mapped:  # the frames-only channel: no message reaches the mapped size
        sender_threshold, channel.MAPPED_BYTES = channel.MAPPED_BYTES, 1 << 62
    try:
        thread = threading.Thread(
            target=lambda: [
                sender.send({"op": "reply"}, [wire.iter_encode(reply)]) for _ in range(count)
            ]
        )
        thread.start()
        for _ in range(count):
            _, (data,) = receiver.receive()
            _touch(wire.decode(data, wire.Limits(len(data), len(data), len(data))))
        thread.join()
    finally:
        if not mapped:
            channel.MAPPED_BYTES = sender_threshold
        a.close()
        b.close()


def through_file(reply: Message, count: int, directory: Path) -> None:
    recorded = directory / "reply.pln"
    recorded.write_bytes(wire.encode(reply))
    a, b = socket.socketpair()
    sender = channel.Channel(a, max_json=1 << 20, max_message=1 << 40)
    receiver = channel.Channel(b, max_json=1 << 20, max_message=1 << 40, files_from_peer=True)

    def send() -> None:
        for _ in range(count):
            sender.send({"op": "reply"}, [channel.File(os.open(recorded, os.O_RDONLY))])

    thread = threading.Thread(target=send)
    thread.start()
    for _ in range(count):
        _, (data,) = receiver.receive()
        _touch(wire.decode(data, wire.Limits(len(data), len(data), len(data))))
    thread.join()
    a.close()
    b.close()


def through_socket(reply: Message, count: int) -> None:
    a, b = socket.socketpair()
    data = wire.encode(reply)
    buffer = bytearray(len(data))

    def send() -> None:
        for _ in range(count):
            for at in range(0, len(data), FRAMES):
                a.sendall(data[at : at + FRAMES])

    thread = threading.Thread(target=send)
    thread.start()
    view = memoryview(buffer)
    for _ in range(count):
        got = 0
        while got < len(buffer):
            got += b.recv_into(view[got:])
        _touch(wire.decode(buffer, wire.Limits(len(buffer), len(buffer), len(buffer))))
    thread.join()
    a.close()
    b.close()


def _touch(message: Message) -> None:
    for array in message.arrays.values():
        float(array.reshape(-1)[:: 4096 // array.itemsize].sum())


def best(run: Callable[[], None], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(times, key=lambda t: t[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=10)
    parser.add_argument("--parameters", type=float, default=1e7)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the file path writes")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(dir=args.dir))
    model = np.ones(int(args.parameters), np.float32)
    reply = Message(
        MessageKind.FIT, task_id="r:1:fit:3", run_id="r", node_id=3, arrays=Arrays({"w": model})
    )
    n = args.replies
    rows = {
        "socket": best(lambda: through_socket(reply, n), args.repeat),
        "frames": best(lambda: through_channel(reply, n, mapped=False), args.repeat),
        "mapped": best(lambda: through_channel(reply, n, mapped=True), args.repeat),
        "file": best(lambda: through_file(reply, n, directory), args.repeat),
    }
    shutil.rmtree(directory)
    print(f"{n} replies of {model.nbytes / 1e6:.0f} MB, best of {args.repeat}")
    print(f"{'path':8} {'wall s':>8} {'cpu s':>8} {'cpu/socket':>11}")
    for name, (wall, cpu) in rows.items():
        print(f"{name:8} {wall:8.3f} {cpu:8.3f} {cpu / rows['socket'][1]:10.1f}x")


if __name__ == "__main__":
    main()
