"""Decode the endpoint's application/x-recordio-protobuf answer with numpy alone.

The SageMaker sample notebook needs MXNet and a temporary file to read this format; this
module needs neither (copy it into any client)::

    probabilities = decode_recordio_protobuf(response["Body"].read())   # (C, H, W) float32
    mask = probabilities.argmax(axis=0)

It parses just what the Record holds (a RecordIO frame around a protobuf ``Record`` whose
``features`` map has ``target`` (packed float32) and ``shape`` (packed int32)), so no protobuf
package is needed.
"""

from __future__ import annotations

import struct

import numpy as np

_MAGIC = 0xCED7230A


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: memoryview):
    """(field number, wire type, value) for each field; value is bytes for wire type 2."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _packed_varints(data: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        values.append(value - (1 << 64) if value >= 1 << 63 else value)
    return values


def _features(record: memoryview) -> dict[str, tuple[int, memoryview]]:
    """features map: name -> (Value's field number, that tensor's packed ``values`` bytes)."""
    features = {}
    for number, _, entry in _fields(record):
        if number != 1:  # Record.features
            continue
        key, value = "", memoryview(b"")
        for entry_field, _, content in _fields(entry):
            if entry_field == 1:
                key = bytes(content).decode()
            elif entry_field == 2:
                value = content
        for kind, _, tensor in _fields(value):
            packed = [c for f, w, c in _fields(tensor) if f == 1 and w == 2]
            features[key] = (kind, packed[0] if packed else memoryview(b""))
    return features


def decode_recordio_protobuf(body: bytes) -> np.ndarray:
    """The (C, H, W) float32 probabilities in one RecordIO-protobuf response body."""
    if len(body) < 8:
        raise ValueError("body too short for a RecordIO record")
    magic, word = struct.unpack_from("<II", body)
    if magic != _MAGIC:
        raise ValueError(f"not RecordIO: magic 0x{magic:08X}")
    length = word & ((1 << 29) - 1)
    features = _features(memoryview(body)[8 : 8 + length])
    shape = _packed_varints(features["shape"][1])
    values = np.frombuffer(features["target"][1], dtype="<f4")
    return values.reshape(shape).squeeze(axis=0)
