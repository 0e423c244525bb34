"""How a client reads what the indexer writes: the tests' side of the formats."""

from __future__ import annotations

from typing import Any

import msgpack
import zstandard


def read_msgpack_zst(data: bytes) -> dict[str, Any]:
    """A CEP 16 shard index or shard, decoded as rattler decodes it."""
    value = msgpack.unpackb(zstandard.ZstdDecompressor().stream_reader(data).read(), raw=False)
    assert isinstance(value, dict)
    return value
