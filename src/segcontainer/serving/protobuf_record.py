"""Class probabilities as one RecordIO-framed protobuf Record (contract §3.5).

``features["target"]`` holds float32 softmax probabilities flattened in C order and
``features["shape"]`` the int32 shape ``[1, C, H, W]``, as the built-in answers and the
SageMaker sample notebook reads it.
"""

from __future__ import annotations

import numpy as np

from segcontainer.data.recordio import LENGTH_MASK, frame
from segcontainer.serving.record_pb2 import Record

# One RecordIO record holds at most 2**29 - 1 bytes (its length field has 29 bits).
RECORD_LIMIT = LENGTH_MASK
FRAMING_BYTES = 128  # protobuf keys, tags and the shape: a few dozen bytes, bounded generously


def answer_bytes(num_classes: int, height: int, width: int) -> int:
    """An upper bound on the record payload for a (num_classes, height, width) answer, known
    before predicting, so an answer too large for one record is refused up front."""
    return 4 * num_classes * height * width + FRAMING_BYTES


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_probabilities(probabilities: np.ndarray) -> bytes:
    """(C, H, W) float32 -> RecordIO-protobuf bytes."""
    record = Record()
    # Filling the repeated field value by value costs seconds and a Python float per pixel
    # for a large image; merging the packed field's wire bytes (field 1, length-delimited)
    # lets protobuf's C parser take the whole array at once.
    raw = np.ascontiguousarray(probabilities, dtype="<f4").tobytes()
    record.features["target"].float32_tensor.MergeFromString(b"\x0a" + _varint(len(raw)) + raw)
    record.features["shape"].int32_tensor.values.extend([1, *probabilities.shape])
    return frame(record.SerializeToString())
