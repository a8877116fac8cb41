"""Errors raised by MLLM backends when a model server cannot give an answer.

Loading failures of local models use :class:`msjoe.errors.ModelLoadError`; the classes here are about talking to
a server. All of them carry the URL, so a log line alone says which endpoint failed.
"""

from __future__ import annotations

from msjoe.errors import MsjoeError


class BackendError(MsjoeError):
    """A model backend failed to produce a reply."""


class UnknownBackendError(BackendError, KeyError):
    """``get_backend`` was asked for a name no backend registered."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class BackendConnectionError(BackendError):
    """The server could not be reached, or dropped the connection, on every attempt."""


class BackendTimeoutError(BackendConnectionError):
    """The server did not answer within the timeout, on every attempt."""


class BackendHTTPError(BackendError):
    """The server answered with an error status (4xx immediately; 429/5xx after the retries ran out).

    Attributes:
        status_code: the HTTP status.
        server_message: the error text the server sent, if it sent one.
    """

    def __init__(self, message: str, status_code: int, server_message: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.server_message = server_message


class BackendCheckError(BackendError):
    """The server failed the check made before a run (:meth:`msjoe.mllm.base.MLLM.check`): a wrong URL, model
    name or key, or a server that cannot answer any chat."""


class MalformedReplyError(BackendError):
    """The server answered 200 but the body is not a chat completion (not JSON, no choices, no text)."""
