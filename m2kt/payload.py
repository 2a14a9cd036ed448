"""The safetensors payload: a strict header reader that needs no torch, and the index check.

The broker checks payloads without a tensor library, so the header is read here
by the rules of the safetensors format: an 8-byte little-endian header length,
a JSON object header, and tensors whose byte ranges tile the data section
exactly (sorted, contiguous, no gaps, no overlap, no trailing bytes). Anything
else is refused: a header that lies about offsets is how a reader is tricked
into reading past a buffer or into two tensors sharing bytes.
"""

import io
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from safetensors.numpy import save as _save_numpy

from m2kt.constants import MAX_SAFETENSORS_HEADER_BYTES
from m2kt.errors import InvalidPayload
from m2kt.jsonutil import JSONError, loads_strict

__all__ = ["DTYPE_BITS", "TensorInfo", "check_index", "read_header", "read_header_bytes", "save_numpy"]

# Bits per element of every dtype the safetensors format names with whole-byte storage.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offset into the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _tensor(name: str, raw: Any) -> TensorInfo:
    if not isinstance(raw, dict):
        raise InvalidPayload(f"tensor {name!r}: header entry must be an object")
    dtype, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise InvalidPayload(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidPayload(f"tensor {name!r}: shape must be a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise InvalidPayload(f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end")
    elements = 1
    for d in shape:
        elements *= d
    info = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    if info.nbytes != elements * DTYPE_BITS[dtype] // 8:
        raise InvalidPayload(f"tensor {name!r}: {info.nbytes} bytes do not hold {dtype} of shape {tuple(shape)}")
    return info


def read_header(fh: IO[bytes], size: int) -> dict[str, TensorInfo]:
    """Read and check the header of a safetensors file of `size` bytes.

    Args:
        fh: positioned at the start of the file.
        size: total byte length of the file.

    Returns:
        Tensor name -> TensorInfo; `__metadata__` is checked and dropped.

    Raises:
        InvalidPayload: with the first rule broken.
    """
    if size < 8:
        raise InvalidPayload("payload is shorter than the 8-byte safetensors header length")
    (n,) = struct.unpack("<Q", fh.read(8))
    if n > MAX_SAFETENSORS_HEADER_BYTES:
        raise InvalidPayload(f"safetensors header of {n} bytes exceeds {MAX_SAFETENSORS_HEADER_BYTES}")
    if 8 + n > size:
        raise InvalidPayload(f"safetensors header length {n} runs past the end of the payload")
    raw = fh.read(n)
    if not raw.startswith(b"{"):
        raise InvalidPayload("safetensors header must start with '{'")
    try:
        header = loads_strict(raw.rstrip(b" "))
    except JSONError as exc:
        raise InvalidPayload(f"safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidPayload("safetensors header must be a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise InvalidPayload("__metadata__ must map strings to strings")
    tensors = {name: _tensor(name, entry) for name, entry in header.items()}
    cursor = 0
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if info.begin != cursor:
            kind = "overlaps" if info.begin < cursor else "leaves a gap before"
            raise InvalidPayload(f"tensor {name!r} {kind} offset {cursor}")
        cursor = info.end
    if cursor != size - 8 - n:
        raise InvalidPayload(f"tensor data covers {cursor} bytes but the data section has {size - 8 - n}")
    return tensors


def read_header_bytes(data: bytes) -> dict[str, TensorInfo]:
    return read_header(io.BytesIO(data), len(data))


def check_index(header: Mapping[str, TensorInfo], index: Mapping[str, Any]) -> None:
    """The payload holds exactly the tensors the manifest's `tensors` index names.

    Raises:
        InvalidPayload: naming what is missing or extra.
    """
    missing = sorted(set(index) - set(header))
    extra = sorted(set(header) - set(index))
    if missing:
        raise InvalidPayload(f"manifest names tensors the payload lacks: {missing[:5]}")
    if extra:
        raise InvalidPayload(f"payload holds tensors the manifest does not name: {extra[:5]}")


def save_numpy(tensors: Mapping[str, np.ndarray[Any, Any]]) -> bytes:
    """Serialize numpy arrays as safetensors bytes (deterministic: keys are sorted by the library)."""
    return _save_numpy(dict(tensors))
