"""Hardware profiles: list, get, create a custom (validated) profile."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status

from perfmodel import HardwareProfile, get_profile, profile_names, save_profile
from perfmodel.hardware import BUILTIN_DIR
from service.api.deps import OwnerDep, SettingsDep
from service.api.errors import UnknownName
from service.api.routes import sweet_spots
from service.api.schemas import ErrorPublic, ProfilesPublic

router = APIRouter(prefix="/hardware", tags=["hardware"])


@router.get("")
def list_profiles() -> ProfilesPublic:
    """All hardware profiles: the paper's platforms and custom ones."""
    profiles = [get_profile(name) for name in profile_names()]
    return ProfilesPublic(data=profiles, count=len(profiles))


@router.get("/{name}", responses={404: {"model": ErrorPublic}})
def get_hardware(name: str) -> HardwareProfile:
    """One profile with its provenance."""
    if name not in profile_names():
        raise UnknownName(f"unknown hardware profile {name!r}", profile_names(), 404)
    return get_profile(name)


@router.post(
    "", status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorPublic}, 422: {"model": ErrorPublic}},
)  # fmt: skip
def create_profile(
    profile: HardwareProfile, settings: SettingsDep, _owner: OwnerDep, response: Response
) -> HardwareProfile:
    """Create a custom profile (validated; the name must be new)."""
    if profile.name in profile_names():
        builtin = (BUILTIN_DIR / f"{profile.name}.json").exists()
        raise HTTPException(
            409, f"a {'built-in' if builtin else 'custom'} profile named {profile.name!r} "
            "already exists; choose another name",
        )  # fmt: skip
    save_profile(profile, settings.profiles_dir)
    sweet_spots.clear_cache()
    response.headers["Location"] = f"/v1/hardware/{profile.name}"
    return profile
