"""bulk_mms.testing: the helpers users get for testing their own job files and wrappers."""

from __future__ import annotations

from pathlib import Path

from msgspec.structs import replace

from bulk_mms import load_job, run_job
from bulk_mms.errors import ServerError
from bulk_mms.testing import FakeClient, FakeClock, ok_receipt
from tests.conftest import FAST

DEMO = Path(__file__).parent.parent / "jobs" / "demo.toml"


async def test_a_users_own_job_runs_against_the_fake_client(tmp_path: Path) -> None:
    """The demo job, as a user's own, runs through FakeClient and FakeClock: no network, no
    real waiting, and the calls are there to assert on."""
    job = replace(load_job(DEMO), ledger=tmp_path / "demo.jsonl")
    client = FakeClient(
        lambda g, n: ServerError("busy", status=503) if n == 0 else ok_receipt(g, n)
    )
    clock = FakeClock()
    s = await run_job(job, FAST, client, clock=clock)
    assert s.sent_groups == 52
    assert len(client.calls) == 53  # one retried after the 503
    assert all(k.startswith("bulk-mms-") for k in client.keys)
    texts = [c.message.text or "" for c in client.calls]
    assert "Hi Ben, Eli, Jo, Dev and Lia! The picnic is Saturday at noon." in " ".join(texts)
    assert not [t for t in texts if t.startswith("Hi !")]
