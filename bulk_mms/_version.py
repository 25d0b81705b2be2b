"""The installed version, from package metadata. Private."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bulk-mms")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"
