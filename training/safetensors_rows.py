"""Row ranges of the tensors in a safetensors file, read with plain reads at their byte offsets (a safetensors file
is an 8-byte header length, a JSON header with each tensor's dtype, shape and byte range, then the data), not
through a memory map: mapped pages of a multi-GB checkpoint would count in every rank's resident memory, and only
the rows a rank keeps are read at all.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_MAX_HEADER = 100_000_000  # bytes, as the safetensors library allows


@dataclass(frozen=True)
class StoredTensor:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # byte offset of the data in the file
    end: int

    def read_rows(self, first: int, count: int) -> torch.Tensor:
        """Rows [first, first + count) of dim 0 (a 0-d tensor: the whole), in the file's dtype, on the CPU."""
        row_shape = self.shape[1:] if self.shape else ()
        row_bytes = math.prod(row_shape) * torch.empty((), dtype=self.dtype).element_size()
        rows = count if self.shape else 1
        buf = torch.empty(rows * row_bytes, dtype=torch.uint8)
        with open(self.file, "rb", buffering=0) as f:
            f.seek(self.start + (first * row_bytes if self.shape else 0))
            view, done = memoryview(buf.numpy()), 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise OSError(f"{self.file} ends before the data of a tensor: truncated")
                done += n
        out = buf.view(self.dtype)
        return out.reshape((count, *row_shape)) if self.shape else out.reshape(())


def read_header(file: Path) -> dict[str, StoredTensor]:
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise OSError(f"{file} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        if size > _MAX_HEADER:
            raise OSError(f"{file} is not a safetensors file (header of {size} bytes)")
        header = json.loads(f.read(size))
    base, out = 8 + size, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise OSError(f"{file}: tensor {name!r} has dtype {info['dtype']}, which is not read here")
        begin, end = info["data_offsets"]
        t = StoredTensor(file, _DTYPES[info["dtype"]], tuple(info["shape"]), base + begin, base + end)
        if (end - begin) != math.prod(t.shape) * torch.empty((), dtype=t.dtype).element_size():
            raise OSError(f"{file}: tensor {name!r} has {end - begin} bytes for shape {t.shape}")
        out[name] = t
    return out
