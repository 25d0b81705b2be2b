"""The fake API in a background thread, for tests that call the synchronous CLI entry point."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from bulk_mms.fake_api import FakeTelnyx, serve


@contextmanager
def fake_api_thread(fake: FakeTelnyx) -> Iterator[str]:
    """Serve ``fake`` on 127.0.0.1, port 0, in its own loop and thread; yield the base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    url: list[str] = []
    done: asyncio.Event | None = None

    async def main() -> None:
        nonlocal done
        done = asyncio.Event()
        async with serve(fake) as base:
            url.append(base)
            ready.set()
            await done.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("fake API did not start")
    try:
        yield url[0]
    finally:
        assert done is not None
        loop.call_soon_threadsafe(done.set)
        thread.join(10)
        loop.close()
