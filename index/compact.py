"""Upstream repodata held as its own JSON bytes, each record checked once.

A conda-forge subdir is 600,000 records; as Python dicts they take five to six times
their JSON. A mirror judges most records by name and plans by name and size, and
publishes the records it keeps as upstream wrote them. So the document is decoded
once into the raw bytes of each record (views into one buffer); each record is
checked in C against :func:`records.record_problem`'s rules and only its name and
size are kept at hand. Other fields are decoded from the raw bytes, one at a time,
when a filter asks for them.
"""

from __future__ import annotations

import codecs
import functools
import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, cast

import msgspec
import orjson
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from .records import SECTIONS, digest_problem, record_problem, version_problem

Text = Annotated[str, Meta(min_length=1)]
Stamp = Annotated[int, Meta(ge=0, lt=10**14)] | Annotated[float, Meta(ge=0, lt=1e14)]


class _Checked(Struct, gc=False):
    """A record's shape; UNSET: the record lacks the field. Digests are checked for
    hex digits in Python (a regex per value here costs more than the whole decode)."""

    name: Text
    version: Text
    build: Text
    size: Annotated[int, Meta(ge=0)]
    build_number: int | UnsetType = UNSET
    depends: list[str] | UnsetType = UNSET
    constrains: list[str] | UnsetType = UNSET
    license: str | UnsetType | None = UNSET
    license_family: str | UnsetType | None = UNSET
    timestamp: Stamp | UnsetType | None = UNSET
    sha256: Annotated[str, Meta(min_length=64, max_length=64)] | UnsetType | None = UNSET
    md5: Annotated[str, Meta(min_length=32, max_length=32)] | UnsetType | None = UNSET
    subdir: str | UnsetType | None = UNSET
    noarch: str | bool | UnsetType | None = UNSET
    track_features: str | UnsetType | None = UNSET


_checked = msgspec.json.Decoder(_Checked)
FIELDS = frozenset(_Checked.__struct_fields__)  # what a record is checked for
# one decoder per field, for a record's other fields: each reads its one value and
# skips the rest (keeping them all decoded would double the memory of a subdir)
_ONE = {
    key: msgspec.json.Decoder(msgspec.defstruct(f"_{key}", [(key, Any, UNSET)], gc=False))
    for key in _Checked.__struct_fields__
    if key not in ("name", "size")
}


class RawRecord(Mapping[str, Any]):
    """One upstream record, checked: a mapping over its raw JSON.

    Equal to any mapping with the same content; :meth:`plain` is that dict."""

    __slots__ = ("name", "raw", "size")

    def __init__(self, raw: Raw, name: str, size: int) -> None:
        self.raw, self.name, self.size = raw, name, size

    def get(self, key: str, default: Any = None) -> Any:
        if key == "name":
            return self.name
        if key == "size":
            return self.size
        decoder = _ONE.get(key)
        if decoder is not None:
            value = getattr(decoder.decode(self.raw), key)
        else:
            value = self.plain().get(key, UNSET)
        return default if value is UNSET else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, UNSET)
        if value is UNSET:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.get(str(key), UNSET) is not UNSET

    def __iter__(self) -> Iterator[str]:
        return iter(self.plain())

    def __len__(self) -> int:
        return len(self.plain())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RawRecord) and self.raw == other.raw:  # bytes, not copied
            return True
        return isinstance(other, Mapping) and self.plain() == plain(other)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, tuple[bytes, str, int]]:
        # its bytes, not its slots: half the time to send a subdir's records to a worker
        return _unpickled, (bytes(self.raw), self.name, self.size)

    def plain(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(memoryview(self.raw))
        return value


@functools.lru_cache(maxsize=64)  # callers ask for a few fixed sets of keys
def _decoder(keys: tuple[str, ...]) -> msgspec.json.Decoder[Any]:
    slots = {f"f{i}": key for i, key in enumerate(keys)}  # a key need not be a name
    fields = [(slot, Any, None) for slot in slots]
    return msgspec.json.Decoder(msgspec.defstruct("_Fields", fields, rename=slots, gc=False))


def fields(record: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[Any, ...]:
    """``record``'s values of ``keys`` (distinct; None where it has none): a raw
    record's in one decode, where a one-field read for each would decode it once per
    key."""
    if isinstance(record, RawRecord):
        return msgspec.structs.astuple(_decoder(keys).decode(record.raw))
    return tuple(record.get(key) for key in keys)


def _unpickled(raw: bytes, name: str, size: int) -> RawRecord:
    return RawRecord(Raw(raw), name, size)


def wired(record: Mapping[str, Any]) -> Any:
    """``record`` to be pickled among many: a raw record as a plain tuple (pickling
    its own way costs a Python call per record, three times the tuple's), any other
    as it is. :func:`unwired` undoes it."""
    if isinstance(record, RawRecord):
        return bytes(record.raw), record.name, record.size
    return record


def unwired(value: Any) -> Mapping[str, Any]:
    if isinstance(value, tuple):
        return RawRecord(Raw(value[0]), value[1], value[2])
    return cast(Mapping[str, Any], value)


def plain(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` as a dict, for writers that serialise it."""
    if isinstance(record, dict):
        return record
    return own(record)


def own(record: Mapping[str, Any]) -> dict[str, Any]:
    """A dict of ``record`` that the caller may change (decoded once, or copied)."""
    return record.plain() if isinstance(record, RawRecord) else dict(record)


def as_dict(value: Any) -> dict[str, Any]:
    """orjson's ``default`` for writers: a compact record decoded as it is written."""
    if isinstance(value, RawRecord):
        return value.plain()
    raise TypeError(f"{type(value).__name__} is not JSON")


def as_fragment(value: Any) -> orjson.Fragment:
    """orjson's ``default`` where a record's bytes matter, not their layout (digests):
    a compact record as its raw JSON, not decoded."""
    if isinstance(value, RawRecord):
        return orjson.Fragment(bytes(value.raw))
    raise TypeError(f"{type(value).__name__} is not JSON")


class _Document(Struct):
    info: Any = None
    packages: dict[str, Raw] | None = None
    packages_conda: dict[str, Raw] | None = msgspec.field(default=None, name="packages.conda")


_document = msgspec.json.Decoder(_Document)
_UTF8_CHUNK = 1 << 20
_PROBLEMS = {
    "size": "'size' is missing or not a byte count",
    "build_number": "'build_number' is not an integer",
    "timestamp": "'timestamp' is not a time in seconds or milliseconds",
    "sha256": "'sha256' is not a sha256 digest",
    "md5": "'md5' is not a md5 digest",
    **{k: f"'{k}' is missing or not a string" for k in ("name", "version", "build")},
    **{k: f"'{k}' is not a list of strings" for k in ("depends", "constrains")},
}


class BadDocument(ValueError):
    pass


def _field_of(error: msgspec.ValidationError) -> str:
    """The top-level field a validation error is about ('' for the value itself)."""
    text = str(error)
    for marker in ("at `$.", "field `"):
        if marker in text:
            return text.split(marker, 1)[1].split("`", 1)[0].split("[", 1)[0]
    return ""


def utf8_problem(data: bytes | bytearray) -> str | None:
    """Where ``data`` is not UTF-8, as JSON must be. A record's raw bytes are checked
    only in the fields read from it, so a bad byte elsewhere would surface only when
    the record is written out; every JSON client refuses such a document whole, so it
    is refused here up front. Repodata is nearly all ASCII: 72 MB is checked in 3-9 ms."""
    if data.isascii():
        return None
    decoder = codecs.getincrementaldecoder("utf-8")()
    for start in range(0, len(data), _UTF8_CHUNK):
        try:
            decoder.decode(data[start : start + _UTF8_CHUNK], start + _UTF8_CHUNK >= len(data))
        except UnicodeDecodeError as exc:
            return f"not UTF-8 at byte {start + exc.start}"
    return None


def read_document(data: bytes | bytearray) -> dict[str, Any]:
    """A repodata document whose sections map file names to each record's raw JSON.

    :class:`BadDocument` says in a few words why ``data`` is no repodata."""
    problem = utf8_problem(data)
    if problem:
        raise BadDocument(f"not valid JSON ({problem})")
    try:
        document = _document.decode(data)
    except msgspec.ValidationError as exc:
        _valid_json(data)  # broken JSON is named as such, whatever shape it began with
        key = _field_of(exc)
        raise BadDocument(
            f"'{key}' is not a JSON object" if key else "repodata is not a JSON object"
        ) from None
    except msgspec.DecodeError as exc:  # (a ValidationError is one too: caught above)
        raise BadDocument(f"not valid JSON ({exc})") from None
    return {
        "info": document.info,
        "packages": document.packages or {},
        "packages.conda": document.packages_conda or {},
    }


def _valid_json(data: bytes | bytearray) -> None:
    try:
        msgspec.json.decode(data, type=Raw)
    except msgspec.DecodeError as exc:
        raise BadDocument(f"not valid JSON ({exc})") from None


def _hex(text: str, size: int) -> bool:
    """Hex digits making ``size`` bytes (fromhex skips blanks: the bytes are counted)."""
    try:
        return len(bytes.fromhex(text)) == size
    except ValueError:
        return False


class Checker:
    """Checks records one by one, as read (raw JSON, or a dict from a shard or a
    package); the records of one name share one string for it."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def __call__(self, value: Any) -> tuple[Mapping[str, Any] | None, str | None]:
        """The record, or why it cannot be trusted (in ``record_problem``'s words)."""
        if not isinstance(value, Raw):
            problem = record_problem(value)
            return (None, problem) if problem else (value, None)
        try:
            record = _checked.decode(value)
        except msgspec.ValidationError as exc:
            key = _field_of(exc)
            if key in _PROBLEMS:
                return None, _PROBLEMS[key]
            return None, f"'{key}' is not a string" if key else "the record is not a JSON object"
        except msgspec.DecodeError:
            return None, "the record is not a JSON object"
        sha256, md5 = record.sha256, record.md5
        if sha256 and not _hex(sha256, 32):
            return None, _PROBLEMS["sha256"]
        if md5 and not _hex(md5, 16):
            return None, _PROBLEMS["md5"]
        problem = version_problem(record.version) or digest_problem(sha256 or None, md5 or None)
        if problem:
            return None, problem
        name = self._names.setdefault(record.name, record.name)
        return RawRecord(value, name, record.size), None


class _NameSize(Struct, gc=False):
    name: Any = None
    size: Any = None


_name_size = msgspec.json.Decoder(_NameSize)


def published(data: bytes) -> dict[str, Mapping[str, Any]]:
    """The records of a repodata.json this mirror wrote, by file name, read compactly
    and as they are (the file is ours; :class:`ValueError` if it is no repodata)."""
    try:
        document = read_document(data)
    except BadDocument as exc:
        raise ValueError(str(exc)) from None
    records: dict[str, Mapping[str, Any]] = {}
    with bulk():
        for section in SECTIONS:
            for filename, raw in document[section].items():
                try:
                    head: _NameSize | None = _name_size.decode(raw)
                except msgspec.MsgspecError:
                    head = None
                if head and isinstance(head.name, str) and isinstance(head.size, int):
                    records[filename] = RawRecord(raw, head.name, head.size)
                else:  # not a record this mirror would write: kept as it is
                    records[filename] = msgspec.json.decode(raw)
    return records


@contextmanager
def bulk() -> Iterator[None]:
    """Build hundreds of thousands of acyclic objects without the cyclic collector
    walking them again and again (a third of the time of a large subdir's read)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


__all__ = [
    "FIELDS",
    "BadDocument",
    "Checker",
    "RawRecord",
    "as_dict",
    "as_fragment",
    "bulk",
    "fields",
    "own",
    "plain",
    "published",
    "read_document",
    "utf8_problem",
]
