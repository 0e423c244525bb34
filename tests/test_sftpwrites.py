"""SFTP writes against a server whose disk fills (``tests/sftpliar.py``, honest, with
a small disk): each write's answer is heard, so a refused one is an error naming the
file and nothing short is renamed into place. (paramiko's own pipelined writes let
these refusals pass unheard: the same test over them published a short file.)
The contract suite covers writes to a real sshd."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conda_ferry.gateways import Gateway, GatewayError, GatewayOptions, is_temp, open_gateway
from tests import sftpliar

DISK = 200_000  # bytes the liar's disk holds, its 30 kB file among them


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    for name, value in sftpliar.install(tmp_path, os.urandom(30_000), 1).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FERRY_LIAR_HONEST", "1")
    monkeypatch.setenv("FERRY_LIAR_DISK", str(DISK))
    options = GatewayOptions(timeout=5, retries=1, retry_delay=0)
    with open_gateway("sftp://u@liar/root", options) as gateway:
        yield gateway  # the liar's tree lasts the session, which the gateway keeps


@pytest.mark.parametrize("size", [DISK, 5 * DISK, 40 * DISK])
def test_a_write_past_a_full_disk_is_an_error_and_publishes_nothing(
    small_disk: Gateway, size: int
) -> None:
    with pytest.raises(GatewayError) as caught:
        small_disk.write_atomic("linux-64/big.conda", io.BytesIO(os.urandom(size)))
    said = str(caught.value)
    assert said.startswith("sftp://u@liar/root/linux-64/big.conda: the server refused a write")
    assert "disk" in said
    left = [info.name for info in small_disk.files("linux-64")]
    assert left == []  # neither the file nor its temp
    data = os.urandom(50_000)
    small_disk.write_atomic("linux-64/small.conda", io.BytesIO(data))
    assert small_disk.read_bytes("linux-64/small.conda") == data
    assert not [n for n in (i.name for i in small_disk.files("linux-64")) if is_temp(n)]
