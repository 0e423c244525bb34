"""Upstream repodata read compactly: records are judged as ``record_problem`` judges
them, read back as the JSON says, and published verbatim. (The fuzzer in
``tests/fuzzing.py`` holds the same agreement over hostile records.)"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from conda_ferry.index import compact, jlap, patches, repodata, shards
from conda_ferry.index.channel import ChannelEntries, ChannelEntry
from conda_ferry.index.records import record_problem
from tests.upstream import build_upstream


def _every_key(record: dict[str, Any]) -> set[str]:
    return {*record, *compact.FIELDS, "name", "size", "not-a-field"}


def _read_back(data: bytes) -> int:
    """Checks each record of ``data`` against its plain JSON; how many were fit."""
    document = compact.read_document(data)
    plain = json.loads(data)
    checked, fit = compact.Checker(), 0
    for section in ("packages", "packages.conda"):
        for filename, raw in document[section].items():
            expected = plain[section][filename]
            record, problem = checked(raw)
            assert (problem is None) == (record_problem(expected) is None), filename
            if record is None:
                continue
            fit += 1
            assert record == expected and compact.plain(record) == expected
            assert dict(record) == expected and len(record) == len(expected)
            for key in _every_key(expected):
                assert record.get(key) == expected.get(key), key
                assert (key in record) == (key in expected), key
            keys = tuple(sorted(_every_key(expected)))
            assert compact.fields(record, keys) == tuple(expected.get(k) for k in keys)
            sent = pickle.loads(pickle.dumps(record))  # as a worker receives it
            assert isinstance(sent, compact.RawRecord) and sent == expected
            assert (sent.name, sent.size) == (record.name, record.size)
            entries = ChannelEntries(
                [
                    ChannelEntry(section, filename, record, {"about": {}}),
                    ChannelEntry(section, "plain.conda", expected, {}),
                ]
            )
            # to the worker that writes the shards and pages of a part of the names
            raw_entry, plain_entry = pickle.loads(pickle.dumps(entries))
            assert type(raw_entry) is ChannelEntry and raw_entry == entries[0]
            assert isinstance(raw_entry.record, compact.RawRecord)
            assert raw_entry.record.raw == raw
            assert type(plain_entry.record) is dict and plain_entry == entries[1]
    return fit


def test_records_read_back_as_their_json(tmp_path: Path) -> None:
    build_upstream(tmp_path)
    for subdir in ("linux-64", "noarch"):
        assert _read_back((tmp_path / subdir / "repodata.json").read_bytes()) > 0


def test_a_real_channels_records_read_back(shared: Path) -> None:
    for path in sorted((shared / "data" / "repodata").glob("*.json")):
        assert _read_back(path.read_bytes()) > 0, path.name


def test_a_missing_field_is_a_key_error(tmp_path: Path) -> None:
    build_upstream(tmp_path)
    document = compact.read_document((tmp_path / "linux-64" / "repodata.json").read_bytes())
    record, _ = compact.Checker()(next(iter(document["packages.conda"].values())))
    assert record is not None and "not-a-field" not in record
    with pytest.raises(KeyError):
        record["not-a-field"]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"packages": [', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[]", "repodata is not a JSON object"),
        (b'{"packages": []}', "'packages' is not a JSON object"),
        (b'{"packages.conda": 3}', "'packages.conda' is not a JSON object"),
        # a bad byte in a field the checks do not read: clients refuse the document whole
        (b'{"packages": {"a-1-0.tar.bz2": {"summary": "\xff"}}}', "not UTF-8 at byte 44"),
        (b'{"info": {"x": "\xed\xa0\x80"}}', "not UTF-8 at byte 16"),
    ],
)
def test_a_document_that_is_no_repodata_says_why(data: bytes, problem: str) -> None:
    with pytest.raises(compact.BadDocument, match=problem):
        compact.read_document(data)


def test_records_of_one_name_share_its_string() -> None:
    data = json.dumps(
        {
            "packages.conda": {
                f"a-1-{i}.conda": {
                    "name": "a",
                    "version": "1",
                    "build": str(i),
                    "size": 1,
                    "sha256": "ab" * 32,
                }
                for i in range(3)
            }
        }
    ).encode()
    checked = compact.Checker()
    names = [
        checked(raw)[0]["name"] for raw in compact.read_document(data)["packages.conda"].values()
    ]  # type: ignore[index]
    assert names[0] is names[1] is names[2]


def test_writers_give_the_same_bytes_for_compact_records(tmp_path: Path) -> None:
    """repodata.json, current_repodata.json, CEP 16 shards and the JLAP patch are the
    same whether the records were read compactly or as dicts."""
    build_upstream(tmp_path)
    data = (tmp_path / "linux-64" / "repodata.json").read_bytes()
    plain = json.loads(data)
    raw = compact.published(data)
    sections = {s: {f: raw[f] for f in plain[s]} for s in ("packages", "packages.conda")}
    ours = repodata.build("linux-64", sections["packages"], sections["packages.conda"])
    theirs = repodata.build("linux-64", plain["packages"], plain["packages.conda"])
    assert repodata.dumps(ours) == repodata.dumps(theirs)
    assert repodata.dumps(repodata.current(ours)) == repodata.dumps(repodata.current(theirs))
    assert shards.build(ours)[:2] == shards.build(theirs)[:2]  # (keys: of what was read)
    first_conda = next(iter(plain["packages.conda"]))
    fix = {"packages.conda": {first_conda: {"depends": ["patched"], "license": None}}}
    fixed = patches.apply(ours, {**fix, "revoke": [next(iter(plain["packages"]))]})
    expected = patches.apply(theirs, {**fix, "revoke": [next(iter(plain["packages"]))]})
    assert repodata.dumps(fixed) == repodata.dumps(expected)
    assert repodata.dumps(ours) == repodata.dumps(theirs)  # the records read stay as read

    changed = json.loads(data)
    first = next(iter(changed["packages.conda"]))
    changed["packages.conda"][first]["depends"] = ["hot-fixed"]
    del changed["packages"][next(iter(changed["packages"]))]
    new = repodata.dumps(changed)
    old_doc, new_doc = jlap.sectioned(data), jlap.sectioned(new)
    assert old_doc is not None and new_doc is not None
    assert jlap.diff(old_doc, new_doc) == jlap.diff(json.loads(data), json.loads(new))
    assert jsonpatch.apply_patch(json.loads(data), jlap.diff(old_doc, new_doc)) == changed
