"""Hardware profiles: list, get, create a custom (validated) profile, calibrate the workers'
host, delete a custom profile (its creator only: :mod:`service.profiles`)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Response, status

from perfmodel import HardwareProfile, get_profile, profile_names, save_profile
from perfmodel.hardware import is_builtin_profile, load_profiles
from service import jobs as store
from service import profiles
from service.api.deps import OwnerDep, SessionDep, SettingsDep
from service.api.errors import UnknownName, documented
from service.api.routes import sweet_spots
from service.api.routes.jobs import check_queue_limit, to_public
from service.api.schemas import CalibrationCreate, JobPublic, ProfilesPublic

router = APIRouter(prefix="/hardware", tags=["hardware"])
log = logging.getLogger("sweetspot.api")


@router.get("")
def list_profiles() -> ProfilesPublic:
    """All hardware profiles: the paper's platforms and custom ones. A profile file that does
    not load (edited by hand, or from a newer Sweetspot) is left out and logged, as `sweetspot
    hardware list` skips it: one bad file must not hide every other profile."""
    profiles, problems = load_profiles()
    for name, error in problems.items():
        log.warning("hardware listing skips profile %s: %s", name, error)
    builtin = [p.name for p in profiles if is_builtin_profile(p.name)]
    return ProfilesPublic(data=profiles, count=len(profiles), builtin=builtin)


@router.get("/{name}", responses=documented(404, 422))
def get_hardware(name: str) -> HardwareProfile:
    """One profile with its provenance."""
    if name not in profile_names():
        raise UnknownName(f"unknown hardware profile {name!r}", profile_names(), 404)
    return get_profile(name)


@router.post("", status_code=status.HTTP_201_CREATED,
             responses=documented(400, 409, 413, 422))  # fmt: skip
def create_profile(
    profile: HardwareProfile, settings: SettingsDep, session: SessionDep, owner: OwnerDep,
    response: Response,
) -> HardwareProfile:
    """Create a custom profile (validated; the name must be new)."""
    # The name is claimed in the database before the file is written: of two callers creating
    # it at once, both got 201, or one a 500, with one's content under the other's name.
    if profile.name in profile_names() or not profiles.claim(session, profile.name, owner):
        builtin = is_builtin_profile(profile.name)
        raise HTTPException(
            409, f"a {'built-in' if builtin else 'custom'} profile named {profile.name!r} "
            "already exists; choose another name",
        )  # fmt: skip
    try:
        save_profile(profile, settings.profiles_dir)
    except BaseException:
        profiles.release(session, profile.name, owner)  # give the name back
        raise
    sweet_spots.clear_cache()
    response.headers["Location"] = f"/v1/hardware/{profile.name}"
    return profile


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT,
               responses=documented(403, 404, 409, 422))  # fmt: skip
def delete_profile(
    name: str, settings: SettingsDep, session: SessionDep, owner: OwnerDep
) -> Response:
    """Delete a custom profile you created (with tokens; without, any custom one); 409 for a
    built-in one and while an unfinished job predicts for it or calibrates it."""
    if name not in profile_names():
        raise UnknownName(f"unknown hardware profile {name!r}", profile_names(), 404)
    if is_builtin_profile(name):
        raise HTTPException(409, f"{name!r} is a built-in profile; it cannot be deleted")
    _check_may_change(session, name, owner)
    if using := profiles.users(session, name):
        raise HTTPException(409, f"profile {name!r} is used by unfinished job(s) "
                                 f"{', '.join(using)}; cancel them or wait")  # fmt: skip
    profiles.delete(session, name, settings.profiles_dir)
    sweet_spots.clear_cache()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _check_may_change(session, name: str, owner: str) -> None:
    if not profiles.may_change(session, name, owner):
        raise HTTPException(403, f"profile {name!r} was not created by you; only its creator "
                                 "may replace or delete it")  # fmt: skip


@router.post("/calibrate", status_code=status.HTTP_202_ACCEPTED,
             responses=documented(400, 403, 409, 413, 422, 429))  # fmt: skip
def calibrate_host(
    body: CalibrationCreate, session: SessionDep, settings: SettingsDep, owner: OwnerDep,
    response: Response,
) -> JobPublic:
    """Calibrate the host the workers run on, as a job; it writes the profile ``name``
    (default ``host``) when it succeeds. An existing custom profile of that name is replaced
    only with ``replace``, by its creator. Follow it like any job."""
    if is_builtin_profile(body.name):
        raise HTTPException(409, f"{body.name!r} is a built-in profile; choose another name")
    replay = store.by_idempotency_key(session, owner, body.idempotency_key) is not None
    if body.name in profile_names() and not replay:  # a retry gets its job
        if not body.replace:
            raise HTTPException(409, f"a custom profile named {body.name!r} already exists; "
                                     "choose another name, or pass replace=true to "
                                     "recalibrate it")  # fmt: skip
        _check_may_change(session, body.name, owner)
    check_queue_limit(session, settings, owner, body.idempotency_key)  # a job like any other
    request = {"kind": "calibration", **body.model_dump(exclude={"idempotency_key"})}
    job, _ = store.create_job(session, owner, request, body.idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return to_public(session, job)
