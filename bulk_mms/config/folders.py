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


#: The folder beside a job's ledgers where its ``--sandbox`` runs keep theirs: a sandbox run
#: never reads or writes a real ledger, nor counts in the real ones' daily cap.
SANDBOX_FOLDER = "sandbox"


def sandbox_ledger(ledger: Path) -> Path:
    """Where a ``--sandbox`` run of a job whose ledger is ``ledger`` keeps its own."""
    return ledger.parent / SANDBOX_FOLDER / ledger.name


def is_sandbox_ledger(where: object) -> bool:
    """Whether ``where`` is a sandbox run's ledger (a file in a sandbox folder)."""
    return isinstance(where, Path) and where.parent.name == SANDBOX_FOLDER


def sandbox_list() -> Path:
    """The sandbox's suppression list, shared by every ``--sandbox`` command and apart from
    the account's."""
    return user_folder("data") / SANDBOX_FOLDER / "suppressed.txt"
