"""The optional features and the extra that installs each. Private.

The base install sends, resumes and reports with a JSONL ledger. A PostgreSQL ledger, the
HTML report, the metrics file and the webhook receiver each need a package of their own,
imported only when the feature is used, inside :func:`needs`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

from bulk_mms.errors import MissingExtra

#: Each extra of ``pyproject.toml`` and the top-level modules it installs.
EXTRAS: Final[dict[str, tuple[str, ...]]] = {
    "postgres": ("psycopg", "psycopg_binary"),
    "html": ("matplotlib",),
    "metrics": ("prometheus_client",),
    "webhooks": ("cryptography",),
}


@contextlib.contextmanager
def needs(extra: str, feature: str) -> Iterator[None]:
    """Imports inside this block that fail for want of ``extra``'s packages raise
    :class:`MissingExtra` naming the extra; any other import error goes on as it is.

    Raises:
        MissingExtra: a package of ``extra`` is not installed.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in EXTRAS[extra]:
            raise
        raise MissingExtra(feature, extra, top) from None
