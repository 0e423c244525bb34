"""repodata.jlap: the append-only patch log old clients use to update cheaply.

The format is in ``../shared/reference/jlap.md``. What matters for clients: every
byte before the footer stays exactly as it was, so a client that remembers the
footer's offset asks only for what follows it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec
import orjson

from .compact import bulk, utf8_problem
from .outputs import DEFAULT_MAX_BYTES, DEFAULT_MAX_PATCH_BYTES
from .repodata import SECTIONS

ZERO_IV = "0" * 64
MAX_PATCH_STEPS = 8192


_HEX32 = re.compile(rb"[0-9a-f]{64}")  # an initialization vector: the key of the chain


class BadJlap(ValueError):
    pass


def blake(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def _chain(previous: str, line: bytes) -> str:
    return hashlib.blake2b(line, key=bytes.fromhex(previous), digest_size=32).hexdigest()


def _compact(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _value(value: Any) -> Any:
    """A patch's value: raw JSON decoded (a whole new section holds raw records)."""
    if isinstance(value, msgspec.Raw):
        return msgspec.json.decode(value)
    if isinstance(value, dict):
        return {key: _value(item) for key, item in value.items()}
    return value


def _differ(before: Any, after: Any) -> bool:
    """Raw records written alike are equal byte for byte; others are decoded."""
    return bool(before != after) and _value(before) != _value(after)


_raw_values = msgspec.json.Decoder(dict[str, msgspec.Raw])


def sectioned(data: bytes) -> dict[str, Any] | None:
    """A repodata.json whose records stay raw JSON, so two of 600,000 records are
    compared without decoding either; None if it is no repodata."""
    if utf8_problem(data):  # else a record could fail to decode only once it differs
        return None
    try:
        return {
            key: _raw_values.decode(raw) if key in SECTIONS else msgspec.json.decode(raw)
            for key, raw in _raw_values.decode(data).items()
        }
    except msgspec.MsgspecError:
        return None


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """An RFC 6902 patch turning ``old`` into ``new``, keyed by filename; records may
    be dicts or raw JSON (:func:`sectioned`).

    Repodata changes by whole records, so comparing record by record is exact and
    linear, where a generic deep diff of 200,000 records takes seconds.
    """
    ops: list[dict[str, Any]] = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key), new.get(key)
        path = f"/{_escape(key)}"
        if key not in new:
            ops.append({"op": "remove", "path": path})
        elif key not in old:
            ops.append({"op": "add", "path": path, "value": _value(after)})
        elif isinstance(before, dict) and isinstance(after, dict) and key in SECTIONS:
            for name in sorted(before.keys() - after.keys()):
                ops.append({"op": "remove", "path": f"{path}/{_escape(name)}"})
            for name, record in sorted(after.items()):
                if name not in before:
                    op = "add"
                elif _differ(before[name], record):
                    op = "replace"
                else:
                    continue
                ops.append({"op": op, "path": f"{path}/{_escape(name)}", "value": _value(record)})
        elif _differ(before, after):
            ops.append({"op": "replace", "path": path, "value": _value(after)})
    return ops


class Jlap(msgspec.Struct):
    """A parsed, verified log: its first line and its patch lines, byte for byte."""

    iv: str = ZERO_IV
    patches: list[bytes] = []
    latest: str = ""  # the footer's: the hash of the repodata.json the log leads to

    @classmethod
    def parse(cls, data: bytes) -> Jlap:
        lines = data.split(b"\n")
        if len(lines) < 3:
            raise BadJlap("too few lines")
        body, footer, checksum = lines[1:-2], lines[-2], lines[-1]
        if not _HEX32.fullmatch(lines[0]):
            raise BadJlap("first line is not 64 lower-case hex digits")
        iv = lines[0].decode()
        running = iv
        for line in (*body, footer):
            running = _chain(running, line)
        if running != checksum.decode(errors="replace"):
            raise BadJlap("checksum does not verify")
        try:
            latest = str(orjson.loads(footer)["latest"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise BadJlap("the footer names no latest hash") from None
        return cls(iv, list(body), latest)

    def append(
        self,
        old_hash: str,
        new_hash: str,
        ops: list[dict[str, Any]],
        max_patch_bytes: int = DEFAULT_MAX_PATCH_BYTES,
    ) -> bool:
        """Add a patch line; False when it is too large to be worth serving."""
        line = _compact({"from": old_hash, "patch": ops, "to": new_hash})
        if len(line) > max_patch_bytes or len(ops) > MAX_PATCH_STEPS:
            return False
        self.patches.append(line)
        return True

    def render(self, latest: str) -> bytes:
        footer = _compact({"latest": latest, "url": "repodata.json"})
        running = self.iv
        for line in (*self.patches, footer):
            running = _chain(running, line)
        return b"\n".join([self.iv.encode(), *self.patches, footer, running.encode()])

    def trim(self, max_bytes: int) -> None:
        """Drop the oldest patches until the log fits in about ``max_bytes``.

        The new first line is the running checksum through the last dropped line, so
        the chain still verifies; clients positioned before the cut refetch from 0.
        """
        size = 64 + sum(len(p) + 1 for p in self.patches) + 200
        if size <= max_bytes:
            return
        target = max_bytes * 3 // 4
        running = self.iv
        while self.patches and size > target:
            line = self.patches.pop(0)
            running = _chain(running, line)
            size -= len(line) + 1
        self.iv = running


@bulk()  # both documents' records, sectioned
def update(
    previous_log: bytes | None,
    old_json: bytes | None,
    new_json: bytes,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_patch_bytes: int = DEFAULT_MAX_PATCH_BYTES,
) -> bytes:
    """The next repodata.jlap, given the last one and the repodata change.

    A missing or unverifiable log starts afresh (clients then fetch the full file
    once); an unchanged repodata.json leaves the log as it was. The two documents
    are compared as raw JSON, record by record: neither is decoded whole.
    """
    log = Jlap()
    if previous_log:
        try:
            log = Jlap.parse(previous_log)
        except BadJlap:
            log = Jlap()
    new_hash = blake(new_json)
    if old_json is not None:
        old_hash = blake(old_json)  # 300 MB at conda-forge size: hashed once
        if log.latest and log.latest != old_hash:
            # A run was killed between repodata.json and the log: the change it made
            # has no patch, so no client may be led along this chain any more.
            log = Jlap()
        if old_hash != new_hash:
            old_doc, new_doc = sectioned(old_json), sectioned(new_json)
            if old_doc is not None and new_doc is not None:  # an unreadable one: no patch
                log.append(old_hash, new_hash, diff(old_doc, new_doc), max_patch_bytes)
    log.trim(max_bytes)
    return log.render(new_hash)
