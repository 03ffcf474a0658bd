"""The web page: a static single-page app served by the API process at ``/``.

Plain HTML, CSS and JavaScript modules under ``static/`` (no build step, nothing fetched from
the internet): the page calls the same ``/v1`` API as any client, with the user's bearer token
when one is set. ``mount(app)`` adds two things: ``GET /`` (the page) and ``/web/*`` (its
assets). Neither appears in the OpenAPI schema, and neither needs a token: the page holds no
data, only the code that asks the API for it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")


def mount(app: FastAPI) -> None:
    """Serve the page at ``/`` and its assets at ``/web``."""

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/web", StaticFiles(directory=STATIC_DIR), name="web")
