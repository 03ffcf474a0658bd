"""Typed dependencies declared once: handlers never repeat ``Depends(...)``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="API token, when tokens are configured")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def owner_of(token: str) -> str:
    """Jobs and uploads are owned by a token's hash, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def get_owner(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's identity: "" when no tokens are configured, else its token's hash."""
    if not settings.tokens:
        return ""
    if credentials is None or credentials.credentials not in settings.tokens:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid API token is required: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return owner_of(credentials.credentials)


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
OwnerDep = Annotated[str, Depends(get_owner)]
