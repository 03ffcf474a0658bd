"""Hardware profiles: list, get, create a custom (validated) profile."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Response, status

from perfmodel import HardwareProfile, get_profile, profile_names, save_profile
from perfmodel.hardware import is_builtin_profile, load_profiles
from service import jobs as store
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
    return ProfilesPublic(data=profiles, count=len(profiles))


@router.get("/{name}", responses=documented(404, 422))
def get_hardware(name: str) -> HardwareProfile:
    """One profile with its provenance."""
    if name not in profile_names():
        raise UnknownName(f"unknown hardware profile {name!r}", profile_names(), 404)
    return get_profile(name)


@router.post("", status_code=status.HTTP_201_CREATED,
             responses=documented(400, 409, 413, 422))  # fmt: skip
def create_profile(
    profile: HardwareProfile, settings: SettingsDep, _owner: OwnerDep, response: Response
) -> HardwareProfile:
    """Create a custom profile (validated; the name must be new)."""
    if profile.name in profile_names():
        builtin = is_builtin_profile(profile.name)
        raise HTTPException(
            409, f"a {'built-in' if builtin else 'custom'} profile named {profile.name!r} "
            "already exists; choose another name",
        )  # fmt: skip
    save_profile(profile, settings.profiles_dir)
    sweet_spots.clear_cache()
    response.headers["Location"] = f"/v1/hardware/{profile.name}"
    return profile


@router.post("/calibrate", status_code=status.HTTP_202_ACCEPTED,
             responses=documented(400, 409, 413, 422, 429))  # fmt: skip
def calibrate_host(
    body: CalibrationCreate, session: SessionDep, settings: SettingsDep, owner: OwnerDep,
    response: Response,
) -> JobPublic:
    """Calibrate the host the workers run on, as a job; it writes the profile ``name``
    (default ``host``) when it succeeds. An existing custom profile of that name is replaced
    only with ``replace``. Follow it like any job."""
    if is_builtin_profile(body.name):
        raise HTTPException(409, f"{body.name!r} is a built-in profile; choose another name")
    replay = store.by_idempotency_key(session, owner, body.idempotency_key) is not None
    if body.name in profile_names() and not body.replace and not replay:  # a retry gets its job
        raise HTTPException(409, f"a custom profile named {body.name!r} already exists; "
                                 "choose another name, or pass replace=true to recalibrate "
                                 "it")  # fmt: skip
    check_queue_limit(session, settings, owner, body.idempotency_key)  # a job like any other
    request = {"kind": "calibration", **body.model_dump(exclude={"idempotency_key"})}
    job, _ = store.create_job(session, owner, request, body.idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return to_public(session, job)
