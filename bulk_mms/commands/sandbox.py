"""The sandbox a command runs against (``--sandbox``): the fake API started in this process,
and for a run, its carrier's signed webhooks to a receiver on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog

from bulk_mms.clock import SystemClock
from bulk_mms.config import Settings
from bulk_mms.errors import ConfigError, MissingExtra
from bulk_mms.extras import needs
from bulk_mms.ledger import Location, load

if TYPE_CHECKING:
    from bulk_mms.fake_api import FakeTelnyx


#: Misbehaviours for ``run --sandbox`` to show (see ``fake_api.FAULT_PRESETS``).
SANDBOX_FAULTS_ENV = "BULK_MMS_SANDBOX_FAULTS"


@contextlib.asynccontextmanager
async def endpoint(
    settings: Settings,
    sandbox: bool,
    *,
    ledger: Location | None = None,
    webhooks_into: Location | None = None,
) -> AsyncIterator[str]:
    """The API's base URL: the configured one, or a sandbox started here for the command.

    For ``track --sandbox`` the sandbox first learns the ledger's sent groups (their run had
    a sandbox of its own), and reports them through a carrier timeline: queued, sent, then
    delivered, or delivery_failed for one number in seven, over a few seconds. With
    ``webhooks_into`` (a sandbox run, ``$BULK_MMS_SANDBOX_WEBHOOKS`` set), the same timeline
    reaches that ledger as signed webhooks once the command is done (:func:`_sandbox_webhooks`).
    """
    if not sandbox:
        yield settings.base_url
        return
    from bulk_mms import fake_api  # noqa: PLC0415 - aiohttp's server: only for the sandbox

    fake = fake_api.FakeTelnyx(
        refuse=dict(fake_api.SANDBOX_REFUSE),
        report=dict(fake_api.SANDBOX_REPORT),
        varied_stamps=True,  # times in every form Telnyx writes them, as a run must read them
    )
    if ledger is not None or webhooks_into is not None:
        fake.delivery_status = fake_api.carrier_timeline(fail_every=7, final_after=3.0)
    if ledger is not None:
        now = SystemClock().wall()
        for g in load(ledger).sent_groups():
            fake.adopt(g.message_id or "", g.sender or "", g.to, max(0.0, now - g.sent_at))
    try:
        fake.faults.extend(fake_api.parse_faults(os.environ.get(SANDBOX_FAULTS_ENV, "")))
    except ValueError as exc:
        raise ConfigError(SANDBOX_FAULTS_ENV, str(exc)) from None
    async with fake_api.serve(fake) as url:
        structlog.get_logger(__name__).info(
            "sandbox.started", base_url=url, faults=len(fake.faults)
        )
        yield url
        if webhooks_into is not None and fake.accepted:
            await _sandbox_webhooks(fake, webhooks_into, settings)


#: ``run --sandbox`` with this set: the sandbox's carrier reports by signed webhook too.
SANDBOX_WEBHOOKS_ENV = "BULK_MMS_SANDBOX_WEBHOOKS"


#: How long a sandbox run posts its carrier's webhooks for (its timeline ends in 3 s).
SANDBOX_WEBHOOKS_S = 6.0


async def _sandbox_webhooks(fake: FakeTelnyx, where: Location, settings: Settings) -> None:
    """The sandbox's carrier reports each recipient's fate (``message.sent``, then
    ``message.finalized``) by signed webhook to a receiver started on this machine for the
    run's ledger: the path a real campaign's webhooks take, end to end (``make demo``).
    The receiver reads delivery reports by the run's ``settings``, as the run did. Without
    the ``webhooks`` extra (cryptography), it is skipped."""
    logger = structlog.get_logger(__name__)
    try:
        with needs("webhooks", "the sandbox's webhooks"):
            from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
                Ed25519PrivateKey,
            )

            from bulk_mms.webhooks import serve_webhooks  # noqa: PLC0415 - cryptography
    except MissingExtra:
        logger.info("sandbox.webhooks_skipped", reason="no cryptography (bulk-mms[webhooks])")
        return
    signer = Ed25519PrivateKey.generate()
    fake.signing_key = signer
    done, ready = asyncio.Event(), asyncio.Event()
    address: list[str] = []

    def started(where_at: str) -> None:
        address.append(where_at)
        ready.set()

    serving = asyncio.create_task(
        serve_webhooks(
            where, "127.0.0.1", 0, signer.public_key(), done, started=started, settings=settings
        )
    )
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        fake.webhook_url = f"http://{address[0]}/webhooks"
        loop = asyncio.get_running_loop()
        end = loop.time() + SANDBOX_WEBHOOKS_S
        everyone = sum(len(m.to) for m in fake.accepted)
        while loop.time() < end:
            await fake.pump_webhooks()
            finals = sum(1 for p in fake.webhooks_sent if p.event_type == "message.finalized")
            if finals >= everyone:
                break  # every recipient's fate is told
            await asyncio.sleep(0.5)
    finally:
        done.set()
    receiver = await serving
    logger.info("sandbox.webhooks", recorded=receiver.recorded, posted=len(fake.webhooks_sent))
