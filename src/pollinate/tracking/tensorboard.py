"""``--track tensorboard:DIR``: the run as TensorBoard event files in ``DIR``.

Written with TensorBoard's own event writer and protos (no TensorFlow, no PyTorch): each
round's numbers as scalars with the round as their step, the parameters as a text summary
(``run``) at step 0, and the final model as a histogram per array at the last round, with
its ``model.npz`` copied beside the event file. ``tensorboard --logdir DIR`` shows it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary, SummaryMetadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util.tensor_util import make_tensor_proto

from pollinate.artifacts import load_arrays
from pollinate.loop.history import History, RoundRecord
from pollinate.tracking.scalars import params, round_scalars, safe

_BINS = 30


class TensorBoardTracker:
    """A ``Tracker`` writing an event file into ``directory`` (created)."""

    def __init__(self, target: str) -> None:
        directory = Path(target)
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.writer = EventFileWriter(str(directory))
        self.last_round = 0

    def start(self, history: History) -> None:
        table = "\n".join(f"| {k} | {v} |" for k, v in params(history).items())
        text = f"| parameter | value |\n| --- | --- |\n{table}"
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        value = Summary.Value(tag="run", metadata=metadata, tensor=make_tensor_proto([text]))
        self._write(Summary(value=[value]), 0)

    def log_round(self, record: RoundRecord) -> None:
        values = [Summary.Value(tag=k, simple_value=v) for k, v in round_scalars(record).items()]
        self._write(Summary(value=values), record.round)
        self.last_round = record.round

    def finish(self, model: Path | None, status: str) -> None:
        if model is not None:
            arrays = load_arrays(model)
            values = [
                Summary.Value(tag=f"model/{safe(name)}", histo=_histogram(array))
                for name, array in arrays.items()
                if array.size and array.dtype.kind in "biuf"
            ]
            self._write(Summary(value=values), self.last_round)
            shutil.copyfile(model, self.directory / model.name)
        self.writer.close()

    def _write(self, summary: Summary, step: int) -> None:
        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        self.writer.flush()


def _histogram(array: np.ndarray) -> HistogramProto:
    values = array.astype(np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return HistogramProto()
    counts, edges = np.histogram(values, bins=_BINS)
    return HistogramProto(
        min=float(values.min()),
        max=float(values.max()),
        num=float(values.size),
        sum=float(values.sum()),
        sum_squares=float(np.dot(values, values)),
        bucket_limit=[float(e) for e in edges[1:]],
        bucket=[float(c) for c in counts],
    )
