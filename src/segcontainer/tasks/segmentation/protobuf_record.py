"""Class probabilities as one RecordIO-framed protobuf Record (contract §3.5).

``features["target"]`` holds float32 softmax probabilities flattened in C order and
``features["shape"]`` the int32 shape ``[1, C, H, W]``, as the built-in answers and the
SageMaker sample notebook reads it.
"""

from __future__ import annotations

import struct

import numpy as np

from segcontainer.data.recordio import LENGTH_MASK, MAGIC_BYTES
from segcontainer.tasks.segmentation.record_pb2 import Record

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


def probability_answer(num_classes: int, height: int, width: int) -> tuple[bytearray, np.ndarray]:
    """The whole answer for a (num_classes, height, width) probability map, framed, with a
    float32 view of its ``target`` values for the predictor to fill in place.

    The record is written by hand around the values (protobuf's wire format: field tags and
    lengths), so a large answer exists once: a protobuf message, its serialisation and the
    framing would each copy it again (six copies of a 432 MB answer once cost 2.5 GB)."""
    raw_length = 4 * num_classes * height * width
    tensor = _varint(raw_length)  # Float32Tensor.values (field 1, packed), then the values
    tensor_length = 1 + len(tensor) + raw_length
    value_length = 1 + len(_varint(tensor_length)) + tensor_length  # Value.float32_tensor
    key = b"\x0a\x06target"  # map entry: key (field 1) "target", value (field 2)
    entry_length = len(key) + 1 + len(_varint(value_length)) + value_length
    prefix = b"".join(
        [
            b"\x0a" + _varint(entry_length) + key,  # Record.features (field 1): one entry
            b"\x12" + _varint(value_length),
            b"\x12" + _varint(tensor_length),
            b"\x0a" + tensor,
        ]
    )
    shape = Record()
    shape.features["shape"].int32_tensor.values.extend([1, num_classes, height, width])
    # Serialised messages concatenate into their merge: the second map entry follows.
    suffix = shape.SerializeToString()
    payload_length = len(prefix) + raw_length + len(suffix)
    if payload_length > RECORD_LIMIT:
        raise ValueError(f"a RecordIO record holds at most {RECORD_LIMIT} bytes")
    header = MAGIC_BYTES + struct.pack("<I", payload_length) + prefix
    answer = bytearray(len(header) + raw_length + len(suffix) + (-payload_length % 4))
    answer[: len(header)] = header
    answer[len(header) + raw_length : len(header) + raw_length + len(suffix)] = suffix
    values = np.frombuffer(answer, dtype="<f4", count=raw_length // 4, offset=len(header))
    return answer, values.reshape(num_classes, height, width)
