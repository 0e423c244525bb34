"""S3 and S3-compatible stores: one PUT or a completed multipart upload is atomic."""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

import boto3
import botocore.exceptions
import botocore.parsers
from botocore.config import Config

from .base import Fetched, FileInfo, Gateway, GatewayOptions, listable
from .errors import (
    CredentialsError,
    GatewayError,
    IntegrityError,
    NotFound,
    PermissionDenied,
    ProtocolError,
    TransientError,
    UsageError,
    WriteRefused,
    not_text,
)
from .streams import CHUNK, GuardedStream
from .urls import parse, redact

PART_SIZE = 16 * CHUNK  # parts in flight per upload; bounds memory, not file size
PARTS_IN_FLIGHT = 4
_THROTTLE = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
}
_NETWORK = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    ConnectionError,
    TimeoutError,
)

_CHECKSUM = (botocore.exceptions.ChecksumError, botocore.exceptions.FlexibleChecksumError)


def _below(prefix: str, key: Any, size: Any) -> bool:
    """An object a listing of ``prefix`` may hold: below it, each level a name (a key
    may hold '..' or '//', and a server may answer anything), a size a file can have."""
    if not isinstance(key, str) or not key.startswith(prefix) or not isinstance(size, int):
        return False
    return all(listable(part, size) for part in key[len(prefix) :].split("/"))


class S3Gateway(Gateway):
    scheme = "s3"

    def __init__(self, url: str, options: GatewayOptions | None = None) -> None:
        super().__init__(url, options)
        loc = parse(url)
        if loc.username or loc.password:
            raise UsageError(
                self.display(),
                "credentials do not belong in an s3:// URL",
                "use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile or an instance role",
            )
        self.bucket = loc.host
        self.prefix = loc.path.strip("/")
        opts = self.options
        # a session of its own: credentials are resolved for this gateway, not cached
        # process-wide by boto3's default session
        verify: bool | str = opts.ca_bundle or opts.verify_tls
        with self._errors(""):
            session = boto3.session.Session(profile_name=opts.profile)
        endpoint = (
            opts.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if endpoint and not endpoint.lower().startswith(("http://", "https://")):
            raise UsageError(
                self.display(),
                f"endpoint_url {redact(endpoint)} is not an http(s) URL",
                "write e.g. https://s3.example.com or http://127.0.0.1:9000",
            )
        try:
            self.client = session.client(
                "s3",
                endpoint_url=endpoint,
                region_name=opts.region,
                verify=verify,
                config=Config(
                    connect_timeout=opts.timeout,
                    read_timeout=opts.timeout,
                    # one attempt: ours retry, with resume ("max_attempts" would count retries)
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    max_pool_connections=32,
                ),
            )
        except ValueError as exc:  # botocore's word on an endpoint it cannot use
            raise UsageError(self.display(), f"endpoint_url: {exc}") from None

    def _key(self, path: str) -> str:
        rel = self._rel(path)
        key = "/".join(p for p in (self.prefix, rel) if p)
        if not key.isascii():
            try:
                key.encode()
            except UnicodeEncodeError:
                raise not_text(self.display(path), "an S3 key") from None
        return key

    def _strip(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        where = self.display(path)
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            code = code or str(status)
            if code == "NoSuchBucket":
                raise NotFound(where, f"bucket '{self.bucket}' does not exist", code=code) from None
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                raise NotFound(where, "no such key", code=code) from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise CredentialsError(where, f"credentials refused ({code})", code=code) from None
            if code in ("AccessDenied", "403") or status == 403:
                raise PermissionDenied(where, f"access denied ({code})", code=code) from None
            if code in _THROTTLE or status >= 500 or status == 429:
                raise TransientError(where, f"S3 {code}", code=code) from None
            raise ProtocolError(where, f"S3 error {code}", code=code) from None
        except botocore.exceptions.NoCredentialsError:
            raise CredentialsError(
                where,
                "no AWS credentials found",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or {option}",
                option="profile",
            ) from None
        except botocore.exceptions.ProfileNotFound:
            profile = self.options.profile or os.environ.get("AWS_PROFILE")
            raise CredentialsError(
                where,
                f"AWS profile '{profile}' not found",
                "name a profile of ~/.aws/config in {option} or AWS_PROFILE",
                option="profile",
            ) from None
        except botocore.exceptions.ConfigParseError as exc:
            raise CredentialsError(
                where,
                f"cannot read the AWS configuration: {exc}",
                "fix that file, or name another in AWS_CONFIG_FILE",
            ) from None
        except _NETWORK as exc:
            raise TransientError(
                where, f"cannot reach S3 ({type(exc).__name__})", "check the endpoint and network"
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ProtocolError(where, type(exc).__name__) from None
        except (ValueError, botocore.parsers.ResponseParserError) as exc:
            # botocore's parsers on an answer no S3 would give
            raise ProtocolError(where, f"an answer S3 would not give ({exc})"[:200]) from None
        except (TypeError, AttributeError, KeyError) as exc:
            # botocore's own code tripping over such an answer (an error status that
            # carries a checksum header, for one)
            raise ProtocolError(
                where, f"an answer botocore cannot read ({type(exc).__name__})"
            ) from None

    def _call(self, path: str, method: str, **kwargs: Any) -> Any:
        def attempt() -> Any:
            with self._errors(path):
                return getattr(self.client, method)(Bucket=self.bucket, **kwargs)

        return self._retry(path, attempt)

    def info(self, path: str) -> FileInfo:
        return self._described(path, self._call(path, "head_object", Key=self._key(path)))

    def _described(self, path: str, answer: dict[str, Any]) -> FileInfo:
        """An object as a HEAD or GET describes it: a size it must give; a date and an
        ETag a lying server may leave out (then nothing is compared against them)."""
        size, when, etag = (answer.get(k) for k in ("ContentLength", "LastModified", "ETag"))
        if not isinstance(size, int) or size < 0:
            raise ProtocolError(self.display(path), "an answer without the object's size")
        mtime = when.timestamp() if isinstance(when, datetime.datetime) else None
        return FileInfo(self._rel(path), size, mtime, etag if isinstance(etag, str) else None)

    def _listing(self, path: str, recursive: bool) -> list[FileInfo]:
        base = self._key(path)
        prefix = f"{base}/" if base else ""
        out: list[FileInfo] = []
        token: dict[str, str] = {}
        seen: set[str] = set()
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix, **token}
            if not recursive:
                kwargs["Delimiter"] = "/"
            page = self._call(path, "list_objects_v2", **kwargs)
            for obj in page.get("Contents", []):
                key, size = obj.get("Key", ""), obj.get("Size", -1)
                if _below(prefix, key, size):
                    when = obj.get("LastModified")
                    mtime = when.timestamp() if when is not None else None
                    out.append(FileInfo(self._strip(key), size, mtime, obj.get("ETag")))
            for common in page.get("CommonPrefixes", []):
                key = common.get("Prefix", "").rstrip("/")
                if _below(prefix, key, 0):
                    out.append(FileInfo(self._strip(key), 0, is_dir=True))
            if not page.get("IsTruncated"):
                break
            following = page.get("NextContinuationToken")
            if not isinstance(following, str) or following in seen:
                raise ProtocolError(self.display(path), "a listing that never ends")
            seen.add(following)
            token = {"ContinuationToken": following}
        if not out and path:
            raise NotFound(self.display(path), "no such prefix")
        return out

    def _listdir(self, path: str) -> list[FileInfo]:
        return self._listing(path, recursive=False)

    def _walk(self, path: str) -> list[FileInfo]:
        return self._listing(path, recursive=True)  # a flat namespace lists in one go

    def _open(self, path: str, offset: int, version: str | None) -> tuple[BinaryIO, str | None]:
        kwargs: dict[str, Any] = {"Key": self._key(path)}
        if offset:
            kwargs["Range"] = f"bytes={offset}-"
        if version:
            kwargs["IfMatch"] = version  # resume only into the same object version
        with self._errors(path):
            response = self.client.get_object(Bucket=self.bucket, **kwargs)
        return self._body(response, path), response.get("ETag")

    def _body(self, response: Any, path: str) -> BinaryIO:
        body, where = response["Body"], self.display(path)

        def read(size: int) -> bytes:
            try:
                return body.read(size)
            except _CHECKSUM:
                raise IntegrityError(
                    where, "the body does not match the checksum sent with it"
                ) from None

        return GuardedStream(read, body.close, where, _NETWORK).as_binary()

    def fetch_if_changed(
        self, path: str, etag: str | None = None, last_modified: str | None = None
    ) -> Fetched | None:
        kwargs: dict[str, Any] = {"Key": self._key(path)}
        if etag:
            kwargs["IfNoneMatch"] = etag
        try:
            response = self._call(path, "get_object", **kwargs)
        except ProtocolError as exc:
            if exc.code in ("304", "NotModified"):
                return None
            raise
        info = self._described(path, response)
        first = self._body(response, path)
        return Fetched(info, self._resuming(path, 0, first, info.etag))

    def write_atomic(self, path: str, stream: BinaryIO, durable: bool = True) -> FileInfo:
        key = self._key(path)
        first = _read_full(stream, PART_SIZE)
        if len(first) < PART_SIZE:
            answer = self._call(path, "put_object", Key=key, Body=first)
            return self._stored(path, len(first), answer.get("ETag"))
        checksum = self._part_checksum()
        upload = self._call(path, "create_multipart_upload", Key=key, **checksum)["UploadId"]
        member = f"Checksum{checksum['ChecksumAlgorithm']}" if checksum else None

        def part(number: int, body: bytes) -> dict[str, Any]:
            answer = self._call(
                path,
                "upload_part",
                Key=key,
                UploadId=upload,
                PartNumber=number,
                Body=body,
                **checksum,
            )
            done = {"ETag": answer["ETag"], "PartNumber": number}
            if member and member in answer:
                done[member] = answer[member]
            return done

        # Parts go up in parallel while the stream is read in order (its digests are
        # checked at its end): a few parts in flight bound the memory.
        pool = ThreadPoolExecutor(max_workers=PARTS_IN_FLIGHT)
        try:
            pending: list[Future[dict[str, Any]]] = []
            parts: list[dict[str, Any]] = []
            chunk, number, sent = first, 1, 0
            while chunk:
                if len(pending) >= PARTS_IN_FLIGHT:
                    parts.append(pending.pop(0).result())
                pending.append(pool.submit(part, number, chunk))
                sent += len(chunk)
                chunk, number = _read_full(stream, PART_SIZE), number + 1
            parts.extend(f.result() for f in pending)
            completed = self._call(
                path,
                "complete_multipart_upload",
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            raise
        pool.shutdown()
        return self._stored(path, sent, completed.get("ETag"))

    def _stored(self, path: str, sent: int, etag: Any) -> FileInfo:
        """The object just written, as a HEAD describes it. One of the ETag the write
        was answered with but not of the size sent is a write the store did not keep
        whole (S3 itself checks each body against its signed digest; a store that
        claims to be S3 may not): it is deleted again, as no rename would have kept it
        out of sight. A HEAD of another ETag describes another object (an older one,
        from a store that is only eventually consistent) and is not taken for ours."""
        info = self.info(path)
        if not isinstance(etag, str) or info.etag != etag:
            return FileInfo(info.path, sent, None, None)
        if info.size != sent:
            with contextlib.suppress(GatewayError):
                self.delete(path)
            raise WriteRefused.short(self.display(path), info.size, sent)
        return info

    def _part_checksum(self) -> dict[str, str]:
        """The checksum each part carries, declared when the upload is created, as
        boto3's own transfers do: botocore adds a CRC32 to every part it sends unless
        told otherwise; S3 has refused such a part where the upload declared no
        checksum ("Checksum Type mismatch"), and where it declared one, a completion
        that does not name each part's."""
        config = self.client.meta.config
        if getattr(config, "request_checksum_calculation", None) != "when_supported":
            return {}  # botocore before 1.36, or checksums only where required
        return {"ChecksumAlgorithm": "CRC32"}

    def delete(self, path: str) -> None:
        self._call(path, "delete_object", Key=self._key(path))

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        try:
            self._call(path, "put_object", Key=self._key(path), Body=data, IfNoneMatch="*")
        except ProtocolError as exc:
            if exc.code in ("PreconditionFailed", "412"):
                return False
            raise
        return True

    def abort_incomplete(self, path: str, older_than: float = 60.0) -> int:
        prefix = self._key(path)
        prefix = f"{prefix}/" if prefix else ""
        cutoff = time.time() - older_than
        page = self._call(path, "list_multipart_uploads", Prefix=prefix)
        aborted = 0
        for upload in page.get("Uploads", []):
            when, key, upload_id = (upload.get(k) for k in ("Initiated", "Key", "UploadId"))
            if (
                isinstance(when, datetime.datetime)
                and when.timestamp() < cutoff
                and key
                and upload_id
            ):
                self._call(path, "abort_multipart_upload", Key=key, UploadId=upload_id)
                aborted += 1
        return aborted

    def close(self) -> None:
        self.client.close()


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes: raw streams may return fewer per read."""
    buffer = io.BytesIO()
    while buffer.tell() < size:
        data = stream.read(size - buffer.tell())
        if not data:
            break
        buffer.write(data)
    return buffer.getvalue()
