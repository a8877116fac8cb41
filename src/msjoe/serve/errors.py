"""Errors of the service, each with the HTTP status it is answered with (a clear 4xx, never a traceback)."""

from __future__ import annotations

from typing import ClassVar

from msjoe.errors import MsjoeError


class ServiceError(MsjoeError):
    """A request the service cannot carry out; ``status_code`` is the HTTP answer."""

    status_code: ClassVar[int] = 400


class PathRefused(ServiceError):
    """A path outside the allowed roots, absolute, with ``..``, through a symbolic link, or not a video file."""

    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    """The request is valid but not now (a question about a video still being indexed)."""

    status_code = 409


class TooLarge(ServiceError):
    status_code = 413


class NotAVideo(ServiceError):
    """An upload whose content is not a video container FFmpeg can read."""

    status_code = 415


class BadRequest(ServiceError):
    status_code = 422


class Busy(ServiceError):
    """The indexing queue is full; retry later."""

    status_code = 503
