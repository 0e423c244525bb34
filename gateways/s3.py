"""S3 and S3-compatible stores: one PUT or a completed multipart upload is atomic."""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import boto3
import botocore.exceptions
from botocore.config import Config

from .base import Fetched, FileInfo, Gateway, GatewayOptions
from .errors import NotFound, PermissionDenied, ProtocolError, TransientError, UsageError
from .retry import call
from .streams import CHUNK, RawStream, ResumingReader
from .urls import parse

PART_SIZE = 16 * CHUNK  # parts in flight per upload; bounds memory, not file size
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


class _Body(RawStream):
    def __init__(self, body: Any, url: str) -> None:
        self._body = body
        self._url = url

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._body.read(None if size is None or size < 0 else size) or b""
        except _NETWORK as exc:
            raise TransientError(self._url, f"connection broke: {type(exc).__name__}") from None

    def close(self) -> None:
        self._body.close()


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
        session = boto3.session.Session(profile_name=opts.profile) if opts.profile else boto3
        verify: bool | str = opts.ca_bundle or opts.verify_tls
        self.client = session.client(
            "s3",
            endpoint_url=opts.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL"),
            region_name=opts.region,
            verify=verify,
            config=Config(
                connect_timeout=opts.timeout,
                read_timeout=opts.timeout,
                retries={"max_attempts": 1, "mode": "standard"},  # ours retry, with resume
                max_pool_connections=32,
            ),
        )

    def _key(self, path: str) -> str:
        rel = self._rel(path)
        return "/".join(p for p in (self.prefix, rel) if p)

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
            if code == "NoSuchBucket":
                raise NotFound(where, f"bucket '{self.bucket}' does not exist") from None
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                raise NotFound(where, "no such key") from None
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch") or (
                status == 403
            ):
                raise PermissionDenied(where, f"access denied ({code})") from None
            if code in _THROTTLE or status >= 500 or status == 429:
                raise TransientError(where, f"S3 {code or status}") from None
            raise ProtocolError(where, f"S3 error {code or status}") from None
        except botocore.exceptions.NoCredentialsError:
            raise PermissionDenied(
                where,
                "no AWS credentials found",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or --profile",
            ) from None
        except botocore.exceptions.ProfileNotFound:
            raise UsageError(where, f"AWS profile '{self.options.profile}' not found") from None
        except _NETWORK as exc:
            raise TransientError(
                where, f"cannot reach S3 ({type(exc).__name__})", "check the endpoint and network"
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ProtocolError(where, type(exc).__name__) from None

    def _call(self, path: str, method: str, **kwargs: Any) -> Any:
        def attempt() -> Any:
            with self._errors(path):
                return getattr(self.client, method)(Bucket=self.bucket, **kwargs)

        return call(attempt, self.options.retry, self.display(path))

    def info(self, path: str) -> FileInfo:
        head = self._call(path, "head_object", Key=self._key(path))
        return FileInfo(
            self._rel(path), head["ContentLength"], head["LastModified"].timestamp(), head["ETag"]
        )

    def list(self, path: str = "", recursive: bool = False) -> list[FileInfo]:
        base = self._key(path)
        prefix = f"{base}/" if base else ""
        out: list[FileInfo] = []
        token: dict[str, str] = {}
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix, **token}
            if not recursive:
                kwargs["Delimiter"] = "/"
            page = self._call(path, "list_objects_v2", **kwargs)
            for obj in page.get("Contents", []):
                out.append(
                    FileInfo(
                        self._strip(obj["Key"]),
                        obj["Size"],
                        obj["LastModified"].timestamp(),
                        obj.get("ETag"),
                    )
                )
            for common in page.get("CommonPrefixes", []):
                out.append(FileInfo(self._strip(common["Prefix"].rstrip("/")), 0, is_dir=True))
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        if not out and path and not self._dir_marker_exists(prefix):
            raise NotFound(self.display(path), "no such prefix")
        return sorted(out, key=lambda f: f.path)

    def _dir_marker_exists(self, prefix: str) -> bool:
        with self._errors(prefix):
            return bool(
                self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1).get(
                    "KeyCount"
                )
            )

    def open_read(self, path: str, offset: int = 0) -> BinaryIO:
        return self._resuming(path, offset, None, None)

    def _resuming(
        self, path: str, offset: int, first: BinaryIO | None, etag: str | None
    ) -> BinaryIO:
        key = self._key(path)
        validator: list[str | None] = [etag]

        def opener(at: int) -> BinaryIO:
            kwargs: dict[str, Any] = {"Key": key}
            if at:
                kwargs["Range"] = f"bytes={at}-"
            if validator[0]:
                kwargs["IfMatch"] = validator[0]  # resume only into the same object version
            with self._errors(path):
                response = self.client.get_object(Bucket=self.bucket, **kwargs)
            validator[0] = validator[0] or response.get("ETag")
            return _Body(response["Body"], self.display(path)).as_binary()

        return ResumingReader(
            opener, self.options.retry, self.display(path), offset, first
        ).as_binary()

    def fetch_if_changed(
        self, path: str, etag: str | None = None, last_modified: str | None = None
    ) -> Fetched | None:
        kwargs: dict[str, Any] = {"Key": self._key(path)}
        if etag:
            kwargs["IfNoneMatch"] = etag
        try:
            response = self._call(path, "get_object", **kwargs)
        except ProtocolError as exc:
            if "304" in exc.message or "NotModified" in exc.message:
                return None
            raise
        info = FileInfo(
            self._rel(path),
            response["ContentLength"],
            response["LastModified"].timestamp(),
            response["ETag"],
        )
        first = _Body(response["Body"], self.display(path)).as_binary()
        return Fetched(info, self._resuming(path, 0, first, response["ETag"]))

    def write_atomic(
        self, path: str, stream: BinaryIO, size: int | None = None, durable: bool = True
    ) -> FileInfo:
        key = self._key(path)
        first = _read_full(stream, PART_SIZE)
        if len(first) < PART_SIZE:
            self._call(path, "put_object", Key=key, Body=first)
            return self.info(path)
        upload = self._call(path, "create_multipart_upload", Key=key)["UploadId"]
        parts = []
        try:
            chunk, number = first, 1
            while chunk:
                etag = self._call(
                    path, "upload_part", Key=key, UploadId=upload, PartNumber=number, Body=chunk
                )["ETag"]
                parts.append({"ETag": etag, "PartNumber": number})
                chunk, number = _read_full(stream, PART_SIZE), number + 1
            self._call(
                path,
                "complete_multipart_upload",
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            raise
        return self.info(path)

    def delete(self, path: str) -> None:
        self._call(path, "delete_object", Key=self._key(path))

    def rename(self, src: str, dst: str) -> None:
        with self._errors(src):
            self.client.copy(
                {"Bucket": self.bucket, "Key": self._key(src)}, self.bucket, self._key(dst)
            )
        self.delete(src)

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        try:
            self._call(path, "put_object", Key=self._key(path), Body=data, IfNoneMatch="*")
        except ProtocolError as exc:
            if "PreconditionFailed" in exc.message or "412" in exc.message:
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
            if upload["Initiated"].timestamp() < cutoff:
                self._call(
                    path, "abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"]
                )
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
