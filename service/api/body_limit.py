"""Request body size limits, enforced before the body is read.

Starlette parses a multipart form (spooling its files to disk) and FastAPI reads a JSON body
before any handler runs, so a limit checked in a handler comes after the whole body was
received: a 1.5 GB upload was written to disk before its 413. This ASGI middleware answers 413
at once when the declared ``Content-Length`` is over the route's limit, and stops reading (413
as well) as soon as a body sent without one (chunked) goes over it.

Uploads (``upload_paths``) may be ``max_upload_bytes`` plus the multipart framing around the
file; every other body (JSON) ``max_body_bytes``. The upload routes still check the file's own
size while reading it (:func:`service.uploads.read_limited`).
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException

MULTIPART_SLACK = 64 * 1024
"""Bytes a multipart upload may carry beyond its file: boundaries, part headers, form fields."""


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body without a ``Content-Length`` grows past its limit."""

    def __init__(self, detail: str):
        super().__init__(413, detail)


class BodyLimit:
    """ASGI middleware: 413 for request bodies over their route's limit, without reading them."""

    def __init__(self, app, max_upload_bytes: int, max_body_bytes: int,
                 upload_paths: frozenset[str]):  # fmt: skip
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_body_bytes = max_body_bytes
        self.upload_paths = upload_paths

    def _limit(self, path: str) -> tuple[int, str]:
        """The most bytes the body of a request to ``path`` may have, and the 413's message."""
        if path in self.upload_paths:
            limit = self.max_upload_bytes
            return limit + MULTIPART_SLACK, f"upload exceeds the limit of {limit} bytes"
        limit = self.max_body_bytes
        return limit, f"request body exceeds the limit of {limit} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, message = self._limit(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:  # refused unread
            await _send_413(send, message)
            return
        received = 0
        started = False

        async def receive_limited():
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(message)
            return event

        async def send_started(event):
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, receive_limited, send_started)
        except BodyTooLarge:  # raised where no exception handler turned it into the 413
            if started:
                raise
            await _send_413(send, message)


def _content_length(scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
