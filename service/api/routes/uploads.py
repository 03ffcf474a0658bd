"""Uploads of starting checkpoints for jobs (validated, never executed)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from model.networks import network_info
from service import jobs as store
from service.api.deps import OwnerDep, SessionDep, SettingsDep
from service.api.errors import documented
from service.api.schemas import UploadPublic
from service.db import Upload
from service.uploads import read_limited, validate_checkpoint

router = APIRouter(prefix="/uploads", tags=["uploads"])


@router.post("", status_code=status.HTTP_201_CREATED, responses=documented(400, 413, 422))
async def upload_checkpoint(
    settings: SettingsDep, session: SessionDep, owner: OwnerDep,
    file: Annotated[UploadFile, File(description=".safetensors or weights-only .pt")],
    model: Annotated[str, Form(max_length=64, description="built-in network the weights fit")],
) -> UploadPublic:
    """Upload dense starting weights for a job; they must load strictly into ``model``."""
    network_info(model)
    data = await read_limited(file, settings.max_upload_bytes)
    upload_id = store.new_id()
    path = settings.uploads_dir / f"{upload_id}.safetensors"
    try:
        await run_in_threadpool(validate_checkpoint, data, model, path)
    except ValueError as error:
        raise HTTPException(422, f"invalid checkpoint: {error}") from None
    row = Upload(id=upload_id, owner=owner, kind="checkpoint", model=model,
                 filename=(file.filename or "checkpoint")[:255], size=len(data),
                 path=str(path))  # fmt: skip
    session.add(row)
    session.commit()
    return UploadPublic(id=row.id, kind="checkpoint", model=model, filename=row.filename,
                        size=row.size, created_at=row.created_at)  # fmt: skip
