"""The installed distribution's version."""

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("sweetspot")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"
