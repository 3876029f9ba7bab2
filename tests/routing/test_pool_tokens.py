"""The call token travels with a pool call to the member, the same on every attempt:
a member that dedupes on it does its side effect once across a retry after SIGKILL."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import actorq


class Payer(actorq.Actor):
    def pay(self, ledger: str, marker: str) -> tuple[str, str]:
        """Record the payment under the call's token once, then die the first time."""
        token = self.context.token
        done = Path(ledger).read_text().split() if os.path.exists(ledger) else []
        if token in done:
            outcome = "deduped"
        else:
            with open(ledger, "a") as f:
                f.write(f"{token}\n")
            outcome = "paid"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return token, outcome
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)  # after the side effect, before the answer
        return token, "unreachable"

    def token(self):
        return self.context.token, self.context.time_left()


def test_the_token_survives_a_retry_after_sigkill_so_a_member_can_dedupe(system, tmp_path):
    pool = system.pool(Payer, size=2, retry=actorq.Retry(max_attempts=3))
    ledger, marker = str(tmp_path / "ledger"), str(tmp_path / "marker")
    token, outcome = pool.pay(ledger, marker).result(timeout=30)
    assert pool.statistics().retries == 1  # the first attempt's member was killed
    assert outcome == "deduped"  # the retry, on the other member, saw the same token
    assert Path(ledger).read_text().split() == [token]  # one payment, not two
    assert token.startswith(f"{pool.name}/")
    other, _ = pool.pay(ledger, marker).result(timeout=30)
    assert other != token  # each call has its own


def test_an_idempotency_key_is_the_token_and_plain_calls_carry_none(system, tmp_path):
    pool = system.pool(Payer, size=2, retry=actorq.Retry())
    assert pool.token(idempotency_key="order-7").result(timeout=20) == ("order-7", None)
    token, left = pool.token(timeout=30.0).result(timeout=20)
    assert token.startswith(f"{pool.name}/")
    assert 0 < left <= 30.0  # the deadline still travels beside it
    assert system.pool(Payer, size=1).token().result(timeout=20) == (None, None)  # bare
    ref = pool.members()[0]
    assert ref.token().result(timeout=20) == (None, None)
    assert ref.call_with("token", token=42).result(timeout=20) == (42, None)
