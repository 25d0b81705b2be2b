"""The user's folders for bulk-mms, as the XDG base directories name them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

_FOLDERS: dict[str, tuple[str, str]] = {
    "config": ("XDG_CONFIG_HOME", ".config"),
    "data": ("XDG_DATA_HOME", ".local/share"),
    "cache": ("XDG_CACHE_HOME", ".cache"),
}


def user_folder(
    kind: Literal["config", "data", "cache"], env: Mapping[str, str] | None = None
) -> Path:
    """``$XDG_CONFIG_HOME/bulk-mms`` (``~/.config/bulk-mms``), and the same for ``data``
    (``~/.local/share``) and ``cache`` (``~/.cache``). A variable that is empty or holds a
    relative path is ignored, as the XDG Base Directory spec says.

    Raises:
        RuntimeError: the variable is not set and there is no home folder.
    """
    env = os.environ if env is None else env
    var, default = _FOLDERS[kind]
    value = env.get(var, "")
    return (Path(value) if os.path.isabs(value) else Path.home() / default) / "bulk-mms"
