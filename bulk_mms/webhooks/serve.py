"""Serving a receiver over HTTP (:func:`serve_webhooks`), its server's log kept ours."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bulk_mms.clock import SystemClock
from bulk_mms.config import JobConfig, Settings
from bulk_mms.errors import ConfigError, LedgerError
from bulk_mms.ledger import Location, keep_database_time, open_store
from bulk_mms.ledger.store import display, is_database
from bulk_mms.suppression import Suppressed
from bulk_mms.webhooks.base import BaseReceiver
from bulk_mms.webhooks.days import JobReceiver
from bulk_mms.webhooks.receiver import WebhookReceiver, opened
from bulk_mms.webhooks.spool import HELD_MAX_AGE_S, Spool, spool_for

log = structlog.get_logger(__name__)


class _ServerLog(logging.Filter):
    """aiohttp's server log, for the receiver: each line it would write becomes one of ours.
    A request aiohttp could not parse (:class:`~aiohttp.http_exceptions.HttpProcessingError`)
    is one ``webhook.bad_request`` line with its status and kind, never its text, which
    quotes the offending header line (an ``Authorization`` a proxy added, say), nor a
    traceback; a fault of this receiver keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            bad = log.warning if record.levelno >= logging.WARNING else log.debug
            bad("webhook.bad_request", status=exc.code, error=type(exc).__name__)
        elif record.levelno >= logging.WARNING:
            log.error("webhook.failed", detail=record.getMessage(), exc_info=record.exc_info)
        return False


def server_log() -> logging.Logger:
    """The logger the receiver's HTTP server writes to (:class:`_ServerLog`); it reaches no
    handler of the logging module."""
    logger = logging.Logger("bulk_mms.webhooks.http")
    logger.addFilter(_ServerLog())
    return logger


async def serve_webhooks(
    target: Location | JobConfig,
    host: str,
    port: int,
    key: Ed25519PublicKey,
    stop: asyncio.Event,
    *,
    started: Callable[[str], None] | None = None,
    suppressed: Suppressed | None = None,
    settings: Settings | None = None,
) -> WebhookReceiver | JobReceiver:
    """Listen on ``host:port`` until ``stop`` is set; return the receiver (for its counts).
    ``target``: one ledger (:class:`WebhookReceiver`), or a job whose ledger is a new one each
    day (:class:`JobReceiver`, on the job's :meth:`~bulk_mms.config.job.JobConfig.ledger_on`
    in its time zone: none of its ledgers need exist yet). ``settings``: the account's
    (:attr:`WebhookReceiver.settings`). Reports answered but not matched yet are spooled
    (:func:`~bulk_mms.webhooks.spool.spool_for`), each kept at most
    :data:`~bulk_mms.webhooks.spool.HELD_MAX_AGE_S`; those a receiver before this one left
    are looked for again before it listens
    (:meth:`~bulk_mms.webhooks.base.BaseReceiver.replay_held`).

    Raises:
        LedgerError: the ledger is missing, empty or cannot be written; a job's ledgers are
            a database's that cannot be reached; the spool cannot be made, opened for
            writing or locked (:meth:`~bulk_mms.webhooks.spool.Spool.check`).
        ConfigError: the address cannot be listened on.
    """
    clock = SystemClock(stop)
    where = target.where if isinstance(target, JobConfig) else target
    if is_database(where):  # a database's: its time, as the job's runs and track keep it
        await keep_database_time(clock, str(where))
    receiver: WebhookReceiver | JobReceiver
    spool = Spool(spool_for(target), max_age_s=HELD_MAX_AGE_S)
    try:
        await asyncio.to_thread(spool.check)
    except OSError as exc:
        raise LedgerError(
            spool.path, f"the spool of held reports cannot be used: {exc.strerror or exc}"
        ) from None
    if isinstance(target, JobConfig):
        receiver = JobReceiver(
            target.ledger_on,
            target.zone,
            key,
            clock=clock,
            suppressed=suppressed,
            settings=settings,
            stop=stop,
            spool=spool,
        )
    else:
        reopen = functools.partial(open_store, target, "append")
        store, view = await asyncio.to_thread(opened, reopen)  # a large one takes seconds
        receiver = WebhookReceiver(
            view,
            store,
            key,
            clock=clock,
            suppressed=suppressed,
            reopen=reopen,
            settings=settings,
            stop=stop,
            spool=spool,
        )
    try:
        if isinstance(receiver, JobReceiver):
            await receiver.roll()
            fields: dict[str, object] = {
                "ledger": display(where),
                "ledgers": [r.store.name for _, r in receiver.ledgers.values()],
            }
        else:
            fields = {"ledger": receiver.store.name, "groups": len(receiver.view.groups)}
        await receiver.replay_held()
        await _listen(receiver, host, port, stop, started, **fields)
    finally:
        await receiver.close()
        if isinstance(receiver, WebhookReceiver):
            await receiver.store.close()
    log.info(
        "webhooks.stopped",
        recorded=receiver.recorded,
        rejected=receiver.rejected,
        unmatched=receiver.unmatched,
    )
    return receiver


async def _listen(
    receiver: BaseReceiver,
    host: str,
    port: int,
    stop: asyncio.Event,
    started: Callable[[str], None] | None,
    **fields: object,
) -> None:
    """Serve ``receiver`` on ``host:port`` until ``stop`` is set (``fields``: what the
    ``webhooks.listening`` line says of its ledgers).

    Raises:
        ConfigError: the address cannot be listened on.
    """
    runner = web.AppRunner(
        receiver.app(), access_log=None, handle_signals=False, logger=server_log()
    )
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError(
                "--listen", f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        bound = runner.addresses[0]
        address = f"{bound[0]}:{bound[1]}"
        log.info("webhooks.listening", address=address, **fields)
        if started is not None:
            started(address)
        await stop.wait()
    finally:
        await runner.cleanup()
