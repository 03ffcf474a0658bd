"""Who may change a custom hardware profile: the caller that created it through the API.

Profiles are files shared by every user of a deployment (``<data dir>/profiles``); the
``profile_owners`` table records who created each one through the API (``POST /v1/hardware``
or a calibration job). Its owner may replace it (calibrate with ``replace``) or delete it. A
profile without a row was put there by the operator (a file, ``sweetspot calibrate``): with
tokens set, no caller may change it; without tokens everyone is the same user, owner ``""``.
"""

from __future__ import annotations

import glob
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from perfmodel import profile_names
from service import jobs as store
from service.db import Job, ProfileOwner, utcnow

STALE_CLAIM_S = 60.0  # a claimed name whose file has not appeared by then is free again


def owner_of(session: Session, name: str) -> str:
    """The profile's owner; ``""`` (the operator's, or a deployment without tokens) when the
    API did not create it."""
    row = session.get(ProfileOwner, name)
    return row.owner if row is not None else ""


def may_change(session: Session, name: str, owner: str) -> bool:
    return owner_of(session, name) == owner


def claim(session: Session, name: str, owner: str) -> bool:
    """Record ``owner`` as the creator of the new profile ``name``; False when the name is
    held. The row's primary key decides between two callers creating it at once. A row whose
    file never appeared (a crash between claim and write, a file removed by hand) is stale
    once it is ``STALE_CLAIM_S`` old and is taken over; a younger one may be a write under way.
    """
    session.add(ProfileOwner(name=name, owner=owner))
    try:
        session.commit()
        return True
    except IntegrityError:
        session.rollback()
    row = session.get(ProfileOwner, name)
    fresh = row is not None and utcnow() - row.created_at < timedelta(seconds=STALE_CLAIM_S)
    if fresh or name in profile_names():
        return False
    record(session, name, owner)
    return True


def release(session: Session, name: str, owner: str) -> None:
    """Give back a name ``owner`` claimed and could not write (its row only, never a file)."""
    row = session.get(ProfileOwner, name)
    if row is not None and row.owner == owner:
        session.delete(row)
        session.commit()


def record(session: Session, name: str, owner: str) -> None:
    """``owner`` created (or recalibrated) the profile ``name``."""
    row = session.get(ProfileOwner, name)
    if row is None:
        session.add(ProfileOwner(name=name, owner=owner))
    else:
        row.owner, row.created_at = owner, utcnow()
    session.commit()


def users(session: Session, name: str) -> list[str]:
    """Unfinished jobs that need the profile: pruning jobs predicting for it, calibrations
    writing it."""
    active = session.scalars(select(Job).where(
        Job.status.in_([store.QUEUED, store.RUNNING, store.CANCELLING])))  # fmt: skip
    return [
        job.id for job in active
        if (job.request or {}).get("hardware") == name
        or ((job.request or {}).get("kind") == "calibration"
            and (job.request or {}).get("name", "host") == name)
    ]  # fmt: skip


def delete(session: Session, name: str, directory: Path) -> None:
    """Remove the profile's file(s) from ``directory`` (any case of .json/.toml, as the
    listing reads them) and its owner row."""
    for path in directory.glob(f"{glob.escape(name)}.*"):
        if path.stem == name and path.suffix.lower() in (".json", ".toml"):
            path.unlink(missing_ok=True)
    row = session.get(ProfileOwner, name)
    if row is not None:
        session.delete(row)
    session.commit()
