"""The few failures a caller must tell apart, whatever the protocol.

Every error carries the URL it concerns with credentials already removed, so that
printing one can never leak a secret, and a short hint saying what to do.
"""

from __future__ import annotations

import socket


class GatewayError(Exception):
    """Base of every gateway failure; ``str()`` is one line fit for a user."""

    hint = ""

    def __init__(
        self,
        url: str,
        message: str,
        hint: str | None = None,
        code: str = "",
        option: str = "",
    ) -> None:
        self.url = url
        self.message = message
        # The protocol's own status ("404", "PreconditionFailed", "550"): callers that
        # must tell answers apart compare this, never the message text.
        self.code = code
        # The declared option (a GatewayOptions field) whose fix the hint names as
        # "{option}"; the caller says how the user spells it: --key-file on the
        # command line, source_options.key_file in a job file.
        self.option = option
        self.option_as = f"--{option.replace('_', '-')}" if option else ""
        if hint is not None:
            self.hint = hint
        super().__init__(url, message)

    def __str__(self) -> str:
        text = f"{self.url}: {self.message}"
        hint = self.hint.replace("{option}", self.option_as)
        return _one_line(f"{text} ({hint})" if hint else text)


def _one_line(text: str) -> str:
    """Words a server chose (an FTP reply, an SFTP status, a reason phrase) may hold a
    line break or a terminal's escape sequence: shown escaped, never acted on."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class NotFound(GatewayError):
    hint = "check the path, bucket or directory name"


class PermissionDenied(GatewayError):
    hint = "check the credentials and the permissions they grant"


class CredentialsError(PermissionDenied):
    """No credentials, or ones the server does not accept: the configuration's to fix."""

    hint = "check the user name and the password, key or token"


class TransientError(GatewayError):
    """Worth retrying: the same request may succeed a moment later."""

    hint = "the server or network failed; it may work on a later run"

    def __init__(
        self,
        url: str,
        message: str,
        hint: str | None = None,
        code: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(url, message, hint, code)


class ProtocolError(GatewayError):
    hint = "the server answered in a way this protocol does not allow"


class ReadOnlyError(GatewayError):
    hint = "this kind of URL can only be read; write to a local path, s3://, sftp:// or ftp://"


class IntegrityError(GatewayError):
    """The bytes that arrived are not the bytes that were promised."""

    hint = "the source may be corrupt or changed during the copy; nothing was written"


class WriteRefused(GatewayError):
    """A write the server would not keep (SFTP's refusal, FTP's 452 or 552 or a reply
    that says it is out of room, a file or S3 object short of what was sent): its disk
    or a quota full, mostly."""

    hint = "is its disk or a quota full? nothing was published"

    @classmethod
    def short(cls, url: str, kept: object, sent: int) -> WriteRefused:
        """A server that answered yes and kept fewer bytes than were sent."""
        return cls(url, f"the server stored {kept} bytes of the {sent} sent")


class TooSlow(GatewayError):
    hint = "the server sends too slowly; lower {option} if the link really is this slow"

    def __init__(self, url: str, message: str) -> None:
        super().__init__(url, message, option="min_rate")


class LockHeld(GatewayError):
    hint = "another run holds this target; wait for it, or remove a lock you know is stale"


class UsageError(GatewayError):
    """A malformed or unsupported URL: the user's mistake, not the server's."""

    hint = ""


def not_text(where: str, what: str) -> UsageError:
    """Bytes a command line did not decode (0xff as \\udcff) in what a protocol's
    library sends only as UTF-8 text (an S3 key, an FTP or SFTP path): refused before
    anything is sent, as the user's to fix, not blamed on the server."""
    return UsageError(where, f"{what} must be UTF-8 text", "check the URL's bytes")


def network_problem(exc: BaseException) -> str:
    """What went wrong on the wire, in words ("connection refused"), whichever library
    wrapped the socket's error and however deep."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 20:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        for kind, words in _PROBLEMS:
            if isinstance(current, kind):
                return words
        todo.extend(a for a in current.args if isinstance(a, BaseException))
        per_address = getattr(current, "errors", None)  # paramiko: one per address tried
        if isinstance(per_address, dict):
            todo.extend(e for e in per_address.values() if isinstance(e, BaseException))
        reason = getattr(current, "reason", None)  # urllib3
        todo.extend(
            e
            for e in (current.__cause__, current.__context__, reason)
            if isinstance(e, BaseException)
        )
    return type(exc).__name__


class ProxyNotFound(socket.gaierror):
    """The proxy the environment names does not resolve: the server's own name may."""


_PROBLEMS: list[tuple[type[BaseException], str]] = [
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset"),
    (ProxyNotFound, "the proxy's host name (http_proxy, https_proxy) not found"),
    (socket.gaierror, "host name not found"),
    (TimeoutError, "timed out"),
    (EOFError, "connection closed"),
]
