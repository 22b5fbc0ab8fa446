"""Writes the event file tests/wrap.rs reads, with TensorBoard's own writer.

    python3 -m venv /tmp/tb && /tmp/tb/bin/pip install tensorboard==2.20.0
    /tmp/tb/bin/python tests/data/tfevents/make.py tests/data/tfevents

Steps 1..4: `val_accuracy` = 0.5 + 0.1 * step as a simple_value (TensorBoard 1, PyTorch's
SummaryWriter) and `loss` = 1 / step as a scalar float tensor (TensorFlow 2's
tf.summary.scalar).
"""
import sys

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

writer = EventFileWriter(sys.argv[1], filename_suffix=".nasop")
for step in range(1, 5):
    value = summary_pb2.Summary.Value(tag="val_accuracy", simple_value=0.5 + 0.1 * step)
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0 / step])
    loss = summary_pb2.Summary.Value(tag="loss", tensor=tensor)
    writer.add_event(
        event_pb2.Event(step=step, wall_time=1_800_000_000.0 + step,
                        summary=summary_pb2.Summary(value=[value, loss]))
    )
writer.close()
