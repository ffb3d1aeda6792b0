"""TensorBoard event records, encoded by hand.

`torch.utils.tensorboard` costs about half a second of imports (TensorBoard's summary
API, a TensorFlow stub, numpy helpers) before the first value is written; a run of the
post's 200 steps takes less. The few messages the runner writes are small, so they are
encoded here directly in protobuf's wire format and framed as TFRecords, the way
TensorBoard reads them. Each function returns bytes; `tests/test_perf.py` parses them with
TensorBoard's own protos and compares them with what `torch.utils.tensorboard` writes.

Field numbers are from tensorboard/compat/proto/{event,summary,tensor,histogram}.proto and
the hparams and custom_scalar plugins' protos.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import socket
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

# -- TFRecord framing: length, masked CRC-32C of the length, data, masked CRC-32C of data --


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()
# _CRC_TABLES_4[k][b]: byte b's effect followed by k zero bytes
_CRC_TABLES_4 = [_CRC_TABLE]
for _ in range(3):
    _CRC_TABLES_4.append([(c >> 8) ^ _CRC_TABLE[c & 0xFF] for c in _CRC_TABLES_4[-1]])
_CRC_ARRAY = np.array(_CRC_TABLE, dtype=np.uint32)
_BLOCK = 16  # bytes per lane of the vectorised CRC


try:  # Google's C implementation: histograms and images are ~50x cheaper to frame
    from google_crc32c import value as _crc32c_c
except ImportError:  # a platform without its wheel: the Python/numpy code below
    _crc32c_c = None


def crc32c(data: bytes) -> int:
    """CRC-32C of a record, the checksum TensorBoard verifies on read."""
    if _crc32c_c is not None:
        return _crc32c_c(data)
    return crc32c_python(data)


def crc32c_python(data: bytes) -> int:
    """CRC-32C without the C library; records of a few KB and more (histograms, images)
    take the numpy path, which is ~10x faster than a byte at a time in Python."""
    if len(data) < 1024:
        return _crc32c_bytes(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
    # A register started at all ones is one started at zero with the first four bytes
    # inverted; from zero, the CRC is linear, so blocks can be done side by side.
    body = np.frombuffer(data, dtype=np.uint8, count=len(data) - len(data) % _BLOCK).copy()
    body[:4] ^= 0xFF
    lanes = body.reshape(-1, _BLOCK)
    crcs = np.zeros(len(lanes), dtype=np.uint32)
    for column in lanes.T:  # every block's CRC, a byte position at a time
        crcs = _CRC_ARRAY[(crcs ^ column) & 0xFF] ^ (crcs >> 8)
    level = 0  # then pairs of neighbours: crc(a + b) = crc(a) moved past len(b) ^ crc(b)
    while len(crcs) > 1:
        if len(crcs) % 2:  # zeros in front of a zero-started CRC change nothing
            crcs = np.concatenate([np.zeros(1, dtype=np.uint32), crcs])
        crcs = _past_zeros(crcs[0::2], _BLOCK << level) ^ crcs[1::2]
        level += 1
    tail = data[len(body) :]
    return _crc32c_bytes(tail, int(crcs[0])) ^ 0xFFFFFFFF


def _crc32c_bytes(data: bytes, crc: int) -> int:
    """Four bytes a step (slicing-by-4: ~2x a byte a step in Python), then the rest."""
    t0, t1, t2, t3 = _CRC_TABLES_4
    n = len(data) & ~3
    for word in struct.unpack(f"<{n // 4}I", data[:n]):
        word ^= crc
        crc = t3[word & 0xFF] ^ t2[(word >> 8) & 0xFF] ^ t1[(word >> 16) & 0xFF] ^ t0[word >> 24]
    for byte in data[n:]:
        crc = t0[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _apply(tables: np.ndarray, crcs: np.ndarray) -> np.ndarray:
    """A linear map of 32-bit registers, given by its effect on each of their four bytes."""
    return (
        tables[0][crcs & 0xFF]
        ^ tables[1][(crcs >> 8) & 0xFF]
        ^ tables[2][(crcs >> 16) & 0xFF]
        ^ tables[3][crcs >> 24]
    )


@functools.cache
def _zeros_tables(n: int) -> np.ndarray:
    """(4, 256) tables that move a CRC register past `n` zero bytes (n a power of two)."""
    x = np.arange(256, dtype=np.uint32)[None, :] << np.array([[0], [8], [16], [24]], np.uint32)
    if n == 1:
        return _CRC_ARRAY[x & 0xFF] ^ (x >> 8)
    half = _zeros_tables(n // 2)
    return _apply(half, _apply(half, x))


def _past_zeros(crcs: np.ndarray, n: int) -> np.ndarray:
    return _apply(_zeros_tables(n), crcs)


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord: what a reader checks before it parses the Event inside."""
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", _masked(crc32c(header)))
        + data
        + struct.pack("<I", _masked(crc32c(data)))
    )


# -- protobuf wire format: only the field kinds these messages use --


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]  # tags, lengths and small numbers


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _ONE_BYTE[n]
    if n < 0:
        n += 1 << 64  # int64: negative numbers are ten bytes of two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _int(number: int, n: int) -> bytes:
    return _varint(number << 3) + _varint(n) if n else b""  # proto3: zero is not written


def _double(number: int, x: float) -> bytes:
    return bytes([number << 3 | 1]) + struct.pack("<d", x)


def _float(number: int, x: float) -> bytes:
    try:
        packed = struct.pack("<f", x)
    except OverflowError:  # too big for float32: protobuf stores an infinity
        packed = struct.pack("<f", math.copysign(math.inf, x))
    return bytes([number << 3 | 5]) + packed


def _message(number: int, payload: bytes) -> bytes:
    """A length-delimited field: a sub-message, a string or bytes."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string(number: int, text: str | bytes) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return _message(number, data) if data else b""  # proto3: empty is not written


def _packed_doubles(number: int, values: Sequence[float]) -> bytes:
    if len(values) == 0:
        return b""
    return _message(number, np.asarray(values, dtype="<f8").tobytes())


def _plain_double(number: int, x: float) -> bytes:
    """A proto3 double without presence: +0.0 is the default and is not written."""
    return _double(number, x) if x != 0.0 or math.copysign(1.0, x) < 0 else b""


# -- Event and Summary --

_uid = itertools.count()


def file_name() -> str:
    """The name TensorBoard's own writers use, unique per process and writer."""
    return (
        f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
        f".{os.getpid()}.{next(_uid)}"
    )


def event(wall_time: float, step: int, *fields: bytes) -> bytes:
    """An Event: wall_time (1), step (2), then its content, already encoded."""
    return _double(1, wall_time) + _int(2, step) + b"".join(fields)


def file_version(wall_time: float) -> bytes:
    """The first Event of every file: `brain.Event:2`, and which writer wrote it."""
    source = _string(1, "runner.log.tensorboard")
    return event(wall_time, 0, _string(3, "brain.Event:2"), _message(10, source))


def restart(wall_time: float, step: int) -> bytes:
    """SessionLog (7) START (1) at `step`: TensorBoard then drops the events at `step` and
    after it that earlier files of the run hold, as it does for a restarted job."""
    return event(wall_time, step, _message(7, _int(1, 1)))


def summary(values: Iterable[bytes]) -> bytes:
    """Event.summary (5): a Summary of one or more Summary.Value messages."""
    return _message(5, b"".join(_message(1, v) for v in values))


def graph_def(graph: bytes) -> bytes:
    """Event.graph_def (4), as `SummaryWriter.add_graph` writes it."""
    return _message(4, graph)


def run_metadata(tag: str, metadata: bytes) -> bytes:
    """Event.tagged_run_metadata (8)."""
    return _message(8, _string(1, tag) + _string(2, metadata))


def _plugin(name: str, content: bytes = b"") -> bytes:
    """SummaryMetadata with its plugin_data (1): plugin_name (1), content (2)."""
    return _message(1, _string(1, name) + _string(2, content))


def _value(tag: str, *fields: bytes) -> bytes:
    return _string(1, tag) + b"".join(fields)


def scalar(tag: str, value: float) -> bytes:
    """Summary.Value with simple_value (2), as `add_scalar` writes it (a oneof: 0.0 is kept)."""
    return _tag(tag) + _float(2, value)


@functools.lru_cache(maxsize=4096)
def _tag(tag: str) -> bytes:
    """Summary.Value.tag (1): the same few tags come back every log step."""
    return _string(1, tag)


def _string_tensor(data: bytes, dims: Sequence[int]) -> bytes:
    """TensorProto: dtype DT_STRING (7), tensor_shape (2), string_val (8)."""
    shape = b"".join(_message(2, _int(1, size)) for size in dims)
    return _int(1, 7) + _message(2, shape) + _message(8, data)


def text(tag: str, content: str) -> bytes:
    """Summary.Value for the Text dashboard, as `add_text` writes it."""
    tensor = _string_tensor(content.encode("utf-8"), [1])
    return _value(tag + "/text_summary", _message(8, tensor), _message(9, _plugin("text")))


def image(tag: str, height: int, width: int, channels: int, png: bytes) -> bytes:
    """Summary.Value with image (4): height, width, colorspace, encoded_image_string."""
    body = _int(1, height) + _int(2, width) + _int(3, channels) + _string(4, png)
    return _value(tag, _message(4, body))


def default_bins() -> list[float]:
    """`SummaryWriter`'s histogram bins: +-1e-12 growing by 10% up to 1e20, and 0."""
    v, buckets = 1e-12, []
    while v < 1e20:
        buckets.append(v)
        v *= 1.1
    return [-b for b in reversed(buckets)] + [0] + buckets


def histogram(tag: str, values: np.ndarray, bins: Sequence[float]) -> bytes:
    """Summary.Value with histo (5), binned as `torch.utils.tensorboard`'s make_histogram."""
    values = values.reshape(-1)
    if values.size == 0:
        raise ValueError(f"histogram {tag!r}: the tensor has no elements")
    limits = np.asarray(bins, dtype=float)
    stats = [values.min(), values.max(), len(values), values.sum(), values.dot(values)]
    return histogram_from_stats(
        tag, np.array(stats, dtype=float), _histogram(values, limits), limits
    )


def histogram_stats(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """What a histogram needs, worked out where the values are (a GPU's 1M-element weights
    stay there): [min, max, count, sum, sum of squares, *bin counts] in float64, one tensor
    for one small copy to the host. The bins are `_histogram`'s, the sums torch's (numpy
    adds in another order, so they can differ in the last bits)."""
    v = values.detach().reshape(-1).double()
    if v.numel() == 0:
        raise ValueError("histogram of a tensor with no elements")
    slot = torch.bucketize(v, edges, right=True)  # edges[slot - 1] <= v < edges[slot]
    slot = torch.where(v == edges[-1], len(edges) - 1, slot)  # the last edge is in the last bin
    slot = torch.where(v.isnan(), 0, slot)  # NaN: counted nowhere, as by np.histogram
    counts = torch.bincount(slot, minlength=len(edges) + 1)[1 : len(edges)]
    head = torch.stack([v.min(), v.max(), v.new_tensor(float(v.numel())), v.sum(), v.dot(v)])
    return torch.cat([head, counts.double()])


def histogram_from_stats(
    tag: str, stats: np.ndarray, counts: np.ndarray, limits: np.ndarray
) -> bytes:
    """The Summary.Value of a histogram from its [min, max, count, sum, sum of squares] and
    its counts in the bins between `limits`."""
    # TensorBoard keeps right bin limits only: keep the non-empty support and one empty bin
    # on its left, so the leftmost limit is kept too.
    cum_counts = np.cumsum(np.greater(counts, 0))
    start, end = np.searchsorted(cum_counts, [0, cum_counts[-1] - 1], side="right")
    start, end = int(start), int(end) + 1
    counts = counts[start - 1 : end] if start > 0 else np.concatenate([[0], counts[:end]])
    limits = limits[start : end + 1]
    body = b"".join(_plain_double(field, float(x)) for field, x in enumerate(stats[:5], 1))
    body += _packed_doubles(6, limits) + _packed_doubles(7, counts)
    return _value(tag, _message(5, body))


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The counts of `np.histogram(values, bins=edges)`: bins closed on the left, the last
    one on both sides, values outside the edges or NaN not counted. One search per value (in
    sorted order, ~2x faster than in random order) instead of np.histogram's checks and one
    search per edge: ~2x faster on small tensors with TensorBoard's 1,500 edges."""
    ordered = np.sort(values)
    slot = np.searchsorted(edges, ordered, side="right")  # edges[slot - 1] <= v < edges[slot]
    slot[ordered == edges[-1]] = len(edges) - 1  # the last edge falls in the last bin
    return np.bincount(slot, minlength=len(edges) + 1)[1 : len(edges)]


def layout(categories: Mapping[str, Mapping[str, Sequence[Any]]]) -> bytes:
    """Summary.Value for the Custom Scalars dashboard, as `add_custom_scalars` writes it.

    `categories` is {category: {chart: ["Multiline", [tags]] or ["Margin", [v, lo, hi]]}}.
    """
    out = b""
    for title, charts in categories.items():
        body = _string(1, title)
        for chart_title, (kind, tags) in charts.items():
            if kind == "Margin":
                if len(tags) != 3:
                    raise ValueError(f"Margin chart {chart_title!r} needs [value, lower, upper]")
                series = _string(1, tags[0]) + _string(2, tags[1]) + _string(3, tags[2])
                content = _message(3, _message(1, series))
            else:
                content = _message(2, b"".join(_string(1, t) for t in tags))
            body += _message(2, _string(1, chart_title) + content)
        out += _message(2, body)
    tensor = _int(1, 7) + _message(2, b"") + _message(8, out)
    return _value(
        "custom_scalars__config__", _message(8, tensor), _message(9, _plugin("custom_scalars"))
    )


# -- the HParams dashboard: a session's start (its hyperparameters) and end (its status) --

STATUS = {"success": 1, "failure": 2}  # tensorboard.hparams.Status


def _struct_value(value: Any) -> bytes:
    """google.protobuf.Value: bool_value (4), number_value (2) or string_value (3)."""
    if isinstance(value, bool):
        return bytes([4 << 3]) + _varint(int(value))
    if isinstance(value, int | float):
        return _double(2, float(value))
    return _message(3, str(value).encode("utf-8"))  # a oneof: "" is kept


def _hparams_value(tag: str, plugin_data: bytes) -> bytes:
    return _value(tag, _message(9, _plugin("hparams", plugin_data)))


def session_start(hparams: Mapping[str, Any]) -> bytes:
    """Summary.Value `_hparams_/session_start_info`: HParamsPluginData.session_start_info (3)."""
    entries = b"".join(
        _message(1, _string(1, name) + _message(2, _struct_value(value)))
        for name, value in hparams.items()
    )
    return _hparams_value("_hparams_/session_start_info", _message(3, entries))


def session_end(status: int, end_time_secs: float) -> bytes:
    """Summary.Value `_hparams_/session_end_info`: HParamsPluginData.session_end_info (4)."""
    body = _int(1, status) + _plain_double(2, end_time_secs)
    return _hparams_value("_hparams_/session_end_info", _message(4, body))
