"""What a subdir publishes besides repodata.json, as options.

Apart from the writers so that the command line can declare its options without
loading zstandard, msgpack and orjson (``ferry --help`` starts in a fraction of
the time).
"""

from __future__ import annotations

from dataclasses import dataclass

from conda_ferry.gateways import option

ZSTD_LEVEL = 10  # 16 saves ~12% more but costs 13x the time: 1.5 s per 8 MB
DEFAULT_MAX_BYTES = 8 << 20  # trim repodata.jlap once the log passes this
DEFAULT_MAX_PATCH_BYTES = 2 << 20  # a bigger patch is left out: clients fetch the whole file


@dataclass(frozen=True)
class OutputOptions:
    """What a subdir publishes besides repodata.json: job keys (``outputs:``) and
    ``ferry index`` options are both made from these fields."""

    zst: bool = option(True, "Write repodata.json.zst.")
    bz2: bool = option(False, "Also write repodata.json.bz2.")
    jlap: bool = option(True, "Write repodata.jlap, the patch log clients update through.")
    shards: bool = option(True, "Write sharded repodata (CEP 16).")
    current_repodata: bool = option(False, "Also write current_repodata.json.")
    html: bool = option(True, "Write index.html pages to browse the channel.")
    zst_level: int = option(
        ZSTD_LEVEL,
        "zstd level of repodata.json.zst (16-19: smaller, many times slower).",
        minimum=1,
        maximum=22,
    )
    jlap_max_bytes: int = option(
        DEFAULT_MAX_BYTES, "Trim repodata.jlap once it passes this many bytes.", minimum=4096
    )
    jlap_max_patch_bytes: int = option(
        DEFAULT_MAX_PATCH_BYTES, "Leave out patches larger than this many bytes.", minimum=1024
    )
