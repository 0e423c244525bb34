"""Ed25519 keys and manifest signatures for bundles that cross an air gap."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from conda_ferry.gateways import temp_name

from .errors import USAGE, FerryError


def keygen(path: Path) -> Path:
    """Write a private key to ``path`` (mode 0600) and its public key beside it.

    Each lands whole or not at all (written under a temporary name, then linked into
    place, which also refuses to replace a file that appeared meanwhile)."""
    if not path.name:
        raise FerryError(f"'{path}': not a file name (give the path of the key to make)", USAGE)
    public_path = path.with_name(path.name + ".pub")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        for target in (path, public_path):
            if target.exists() or target.is_symlink():
                raise FerryError(
                    f"{target}: exists already (choose another name; keys are never overwritten)",
                    USAGE,
                )
        _write_new(path, private, 0o600)
        try:
            _write_new(public_path, public, 0o644)
        except BaseException:
            path.unlink()  # no private key whose public half is missing
            raise
    except OSError as exc:
        raise FerryError(
            f"{path}: cannot write the key: {exc.strerror} (give a path in a writable "
            "directory that exists)",
            USAGE,
        ) from None
    return public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    temp = Path(temp_name(str(path)))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(temp, path)  # refuses an existing file, unlike a rename
    finally:
        temp.unlink()


def _load(path: str, private: bool) -> Ed25519PrivateKey | Ed25519PublicKey:
    what = "private" if private else "public"
    try:
        data = Path(path).read_bytes()
        key = (
            serialization.load_pem_private_key(data, password=None)
            if private
            else serialization.load_pem_public_key(data)
        )
    except FileNotFoundError:
        raise FerryError(f"{path}: no such key file", 2) from None
    except OSError as exc:
        raise FerryError(f"{path}: cannot read the key: {exc.strerror}", 2) from None
    except (ValueError, TypeError):
        raise FerryError(
            f"{path}: not an unencrypted PEM {what} key (make one with 'ferry keygen')", 2
        ) from None
    expected = Ed25519PrivateKey if private else Ed25519PublicKey
    if not isinstance(key, expected):
        raise FerryError(f"{path}: not an Ed25519 {what} key (make one with 'ferry keygen')", 2)
    return key


def sign(data: bytes, key_path: str) -> bytes:
    key = _load(key_path, private=True)
    assert isinstance(key, Ed25519PrivateKey)
    return key.sign(data).hex().encode()


def verify(data: bytes, signature: bytes | None, public_path: str, where: str) -> None:
    key = _load(public_path, private=False)
    assert isinstance(key, Ed25519PublicKey)
    if signature is None:
        raise FerryError(
            f"{where}: the bundle is not signed, and a verify key is configured "
            "(refused; sign exports with --sign)"
        )
    try:
        key.verify(bytes.fromhex(signature.decode().strip()), data)
    except (InvalidSignature, ValueError):
        raise FerryError(
            f"{where}: the manifest signature does not verify with {public_path} "
            "(refused: the bundle was altered or signed by another key)"
        ) from None
