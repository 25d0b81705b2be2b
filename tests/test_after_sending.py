"""After the send, with real ``bulk-mms`` subprocesses: the webhook receiver stops as its
commands table says, whatever it is still looking for."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bulk_mms.fake_api import FakeTelnyx
from tests.conftest import JobFactory
from tests.threaded import fake_api_thread

pytestmark = pytest.mark.slow

KEY = "after-sending-test-key"
SIGNER = Ed25519PrivateKey.generate()
PUBLIC_B64 = base64.b64encode(
    SIGNER.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
).decode()


def bulk_mms(*args: str) -> list[str]:
    return [sys.executable, "-m", "bulk_mms", "--log-json", *args]


def environment() -> dict[str, str]:
    env = {**os.environ, "TELNYX_API_KEY": KEY, "TELNYX_PUBLIC_KEY": PUBLIC_B64}
    env.pop("TELNYX_BASE_URL", None)
    return env


def sent_job(jobs: JobFactory, n: int) -> Path:
    """A real run of ``n`` recipients into the job's ledger; the ledger's path."""
    jobs.people(n)
    job = jobs.job(extra="group_size = 4")
    with fake_api_thread(FakeTelnyx(api_key=KEY)) as url:
        done = subprocess.run(
            bulk_mms("run", str(job.path), "--base-url", url, "--skip-media-check"),
            env=environment(),
            capture_output=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return job.ledger


def listening_port(stderr: IO[bytes]) -> int:
    """The port a ``bulk-mms webhooks --listen 127.0.0.1:0`` logged it listens on."""
    for line in stderr:
        if b"webhooks.listening" in line:
            return int(orjson.loads(line)["address"].rpartition(":")[2])
    raise AssertionError("the receiver never listened")


def post_signed(port: int, body: Mapping[str, object]) -> tuple[int, bytes]:
    raw = orjson.dumps(body)
    stamp = str(int(time.time()))
    sig = base64.b64encode(SIGNER.sign(stamp.encode() + b"|" + raw)).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"telnyx-timestamp": stamp, "telnyx-signature-ed25519": sig}
        conn.request("POST", "/webhooks", body=raw, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_sigterm_while_an_event_is_looked_for_again_exits_0_at_once(jobs: JobFactory) -> None:
    """SIGTERM while an event about a message the ledger does not know is being looked for
    again (its late window): the receiver stops within seconds, logs webhooks.stopped and
    exits 0, with no traceback."""
    ledger = sent_job(jobs, 4)
    cmd = bulk_mms("webhooks", str(ledger), "--listen", "127.0.0.1:0")
    proc = subprocess.Popen(cmd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        port = listening_port(proc.stderr)
        unknown = {
            "data": {
                "event_type": "message.finalized",
                "id": str(uuid.uuid4()),
                "occurred_at": "2026-12-06T07:31:22.000+00:00",
                "payload": {
                    "id": str(uuid.uuid4()),
                    "from": {"phone_number": "+18445550001"},
                    "to": [{"phone_number": "+12125559999", "status": "delivered"}],
                    "errors": [],
                },
            }
        }
        status, body = post_signed(port, unknown)
        assert (status, orjson.loads(body)["pending"]) == (200, 1)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"Traceback" not in err
    assert proc.returncode == 0
    assert b"webhooks.stopped" in err
    assert took < 15, f"took {took:.1f} s to stop"  # not the 30 s late window, even loaded
