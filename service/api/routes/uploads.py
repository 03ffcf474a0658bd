"""Uploads of starting checkpoints for jobs (validated, never executed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select

from model.networks import network_info
from service import jobs as store
from service.api.deps import OwnerDep, SessionDep, SettingsDep
from service.api.errors import documented
from service.api.schemas import UploadPublic, UploadsPublic
from service.db import Job, Upload
from service.uploads import read_limited, validate_checkpoint

router = APIRouter(prefix="/uploads", tags=["uploads"], responses=documented(422))


NOT_FOUND = documented(404)


def _public(row: Upload) -> UploadPublic:
    return UploadPublic(id=row.id, kind="checkpoint", model=row.model, filename=row.filename,
                        size=row.size, created_at=row.created_at)  # fmt: skip


def _own(session, owner: str, upload_id: str) -> Upload:
    row = session.get(Upload, upload_id)
    if row is None or row.owner != owner:
        raise HTTPException(404, f"upload {upload_id!r} not found")
    return row


@router.post("", status_code=status.HTTP_201_CREATED,
             responses=documented(400, 413, 422, 429))  # fmt: skip
async def upload_checkpoint(
    settings: SettingsDep, session: SessionDep, owner: OwnerDep,
    file: Annotated[UploadFile, File(description=".safetensors or weights-only .pt")],
    model: Annotated[str, Form(max_length=64, description="built-in network the weights fit")],
) -> UploadPublic:
    """Upload dense starting weights for a job; they must load strictly into ``model``."""
    network_info(model)
    stored = session.scalar(select(func.count()).select_from(Upload).where(Upload.owner == owner))
    if stored >= settings.max_uploads:
        raise HTTPException(429, f"you have {stored} uploads stored, the limit; delete some "
                                 "(DELETE /v1/uploads/{id}) first")  # fmt: skip
    data = await read_limited(file, settings.max_upload_bytes)
    upload_id = store.new_id()
    path = settings.uploads_dir / f"{upload_id}.safetensors"
    try:
        await run_in_threadpool(validate_checkpoint, data, model, path, file.filename or "")
    except ValueError as error:
        raise HTTPException(422, f"invalid checkpoint: {error}") from None
    row = Upload(id=upload_id, owner=owner, kind="checkpoint", model=model,
                 filename=(file.filename or "checkpoint")[:255], size=len(data),
                 path=str(path))  # fmt: skip
    session.add(row)
    session.commit()
    return _public(row)


@router.get("")
def list_uploads(session: SessionDep, owner: OwnerDep) -> UploadsPublic:
    """Your stored uploads, newest first."""
    rows = session.scalars(select(Upload).where(Upload.owner == owner)
                           .order_by(Upload.created_at.desc(), Upload.id))  # fmt: skip
    data = [_public(row) for row in rows]
    return UploadsPublic(data=data, count=len(data))


@router.get("/{upload_id}", responses=NOT_FOUND)
def get_upload(upload_id: str, session: SessionDep, owner: OwnerDep) -> UploadPublic:
    """One of your uploads."""
    return _public(_own(session, owner, upload_id))


@router.delete("/{upload_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=documented(404, 409))  # fmt: skip
def delete_upload(upload_id: str, session: SessionDep, owner: OwnerDep) -> Response:
    """Delete an upload (file and record); 409 while a job that starts from it has not ended.
    Finished jobs keep their own weights."""
    row = _own(session, owner, upload_id)
    active = session.scalars(select(Job).where(
        Job.owner == owner, Job.status.in_([store.QUEUED, store.RUNNING, store.CANCELLING])))
    users = [job.id for job in active if (job.request or {}).get("checkpoint") == upload_id]
    if users:
        raise HTTPException(409, f"upload {upload_id!r} is the checkpoint of unfinished "
                                 f"job(s) {', '.join(users)}; cancel them or wait")  # fmt: skip
    Path(row.path).unlink(missing_ok=True)
    session.delete(row)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
