"""RecordIO framing (DMLC's format, as SageMaker uses it), reading and writing.

Each record: uint32 magic 0xCED7230A | uint32 (cflag << 29 | length) | payload | zero padding
to a multiple of 4 bytes. Writers here emit whole records (cflag 0), which the SageMaker SDK
and MXNet both read. The reader also joins records that DMLC's writer split where the magic
appeared inside a payload (cflag 1 = first part, 2 = middle, 3 = last), re-inserting the magic.
A few lines of struct: no library for this framing runs without MXNet.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1


class RecordIOError(ValueError):
    """A corrupt RecordIO stream: bad magic, truncated record or split-record sequence."""


def frame(payload: bytes) -> bytes:
    """One whole (cflag 0) record around ``payload``."""
    if len(payload) > LENGTH_MASK:
        raise ValueError(f"a RecordIO record holds at most {LENGTH_MASK} bytes")
    padding = -len(payload) % 4
    return MAGIC_BYTES + struct.pack("<I", len(payload)) + payload + b"\0" * padding


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def iter_records(stream: BinaryIO) -> Iterator[bytes]:
    """Yield each record's payload until EOF; raise RecordIOError on a corrupt stream."""
    index, parts = 0, None
    while True:
        header = _read_exact(stream, 8)
        if not header:
            if parts is not None:
                raise RecordIOError(f"record {index}: stream ended inside a split record")
            return
        if len(header) < 8:
            raise RecordIOError(f"record {index}: truncated header ({len(header)} of 8 bytes)")
        magic, word = struct.unpack("<II", header)
        if magic != MAGIC:
            raise RecordIOError(f"record {index}: bad magic 0x{magic:08X} (expected 0xCED7230A)")
        cflag, length = word >> 29, word & LENGTH_MASK
        payload = _read_exact(stream, length)
        if len(payload) < length:
            raise RecordIOError(f"record {index}: truncated ({len(payload)} of {length} bytes)")
        _read_exact(stream, -length % 4)
        if cflag == 0:
            if parts is not None:
                raise RecordIOError(f"record {index}: whole record inside a split record")
            index += 1
            yield payload
        elif cflag == 1:
            if parts is not None:
                raise RecordIOError(f"record {index}: split record started twice")
            parts = [payload]
        elif cflag in (2, 3):
            if parts is None:
                raise RecordIOError(f"record {index}: continuation without a first part")
            parts.append(payload)
            if cflag == 3:
                index += 1
                yield MAGIC_BYTES.join(parts)
                parts = None
        else:
            raise RecordIOError(f"record {index}: unknown cflag {cflag}")
