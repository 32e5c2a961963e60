"""Email over SMTP (aiosmtplib), over a pool of reused connections.

Each message is its own mail transaction (MAIL, RCPT, DATA) on a connection kept
open across messages and batches. What each reply means (channels/base.py):
- 250 after DATA: `sent`; the provider reference is the Message-ID, derived from
  the delivery key, so a copy that ever went out twice is recognisable as one;
- 5xx to RCPT or DATA: that recipient `failed` with the code and text, never
  retried; 5xx to MAIL (the sender refused) halts the campaign (ProviderRefused);
- 4xx, a refused connection or one dropped before DATA: nothing was taken, the
  message is tried again (a new connection if needed) with backoff; when the
  tries are spent it is `failed` as not sent (`smtp_unavailable`);
- a drop or a timeout during DATA: the server may have it, so it is `unknown`
  and never resent. SMTP has no lookup by reference, so `reconcile` can only
  answer `unknown`: an email is sent at most once.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from urllib.parse import quote

import aiosmtplib
from sluice.channels.base import (
    AMBIGUOUS,
    Ambiguous,
    Backoff,
    Outbound,
    Outcome,
    Permanent,
    Throttled,
    Transient,
    classify_smtp,
    delivery_key,
)

DEFAULT_SUBJECT = "A message from your shop"
# Reasons of the outcomes this channel gives itself.
SMTP_UNAVAILABLE = "smtp_unavailable"
SMTP_NO_LOOKUP = "smtp_no_lookup"


def split_subject(body: str) -> tuple[str, str]:
    """(Subject, text) of a rendered body: the send path puts the campaign's title on the first line;
    a body of one line has the default subject."""
    first, sep, rest = body.partition("\n")
    return (first.strip(), rest) if sep and first.strip() else (DEFAULT_SUBJECT, body)


def message_id(m: Outbound, domain: str) -> str:
    """The Message-ID of a delivery: the same for every attempt of it."""
    return f"<{delivery_key(m)}@{domain}>"


def render(m: Outbound, sender: str, unsubscribe_url: str, now: datetime) -> bytes:
    """The email of one delivery as sent, headers as the recipient will see them: UTF-8 text in base64,
    a non-ASCII subject as an RFC 2047 word. Written out directly: the email package's generator costs
    several times the SMTP exchange of a message on loopback (docs/benchmarks.md)."""
    domain = sender.rpartition("@")[2] or "localhost"
    subject, text = split_subject(m.body)
    key = delivery_key(m)
    if not subject.isascii():
        subject = Header(subject, "utf-8").encode()
    # RFC 2369 and RFC 8058 (one-click): the link names the delivery, the mailbox is the fallback.
    sep = "&" if "?" in unsubscribe_url else "?"
    headers = (
        f"From: {sender}\r\n"
        f"To: {m.address}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {email.utils.format_datetime(now)}\r\n"
        f"Message-ID: {message_id(m, domain)}\r\n"
        f"List-Unsubscribe: <{unsubscribe_url}{sep}d={quote(key)}>,\r\n"
        f" <mailto:unsubscribe@{domain}?subject=unsubscribe%20{quote(key)}>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    )
    body = base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")
    return headers.encode() + body


@dataclass
class _Holder:
    conn: aiosmtplib.SMTP | None = None


class EmailChannel:
    def __init__(
        self, name: str = "email", *, host: str, port: int, sender: str, connections: int = 4,
        timeout_s: float = 10.0, backoff: Backoff | None = None, unsubscribe_url: str,
        start_tls: bool | None = False, username: str | None = None, password: str | None = None,
    ):  # fmt: skip
        self.name = name
        self.host, self.port, self.sender = host, port, sender
        self.connections = connections
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff()
        self.unsubscribe_url = unsubscribe_url
        self.start_tls, self.username, self.password = start_tls, username, password
        self._idle: list[aiosmtplib.SMTP] = []
        self._rng = random.Random()
        self.opened = 0  # connections opened so far (connection reuse is visible to tests and benchmarks)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await conn.quit()
            except (aiosmtplib.SMTPException, OSError):
                conn.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        if self._idle:
            return self._idle.pop()
        conn = aiosmtplib.SMTP(
            hostname=self.host, port=self.port, timeout=self.timeout_s, start_tls=self.start_tls,
            username=self.username, password=self.password,
        )  # fmt: skip
        try:
            await conn.connect()
        except (aiosmtplib.SMTPException, OSError) as exc:  # nothing of the message left
            raise Transient(f"connect: {type(exc).__name__}: {exc}") from exc
        self.opened += 1
        return conn

    @staticmethod
    def _drop(holder: _Holder) -> None:
        if holder.conn is not None:
            holder.conn.close()
            holder.conn = None

    async def send(self, messages: list[Outbound]) -> list[Outcome]:
        n = max(1, min(self.connections, len(messages)))
        shares = await asyncio.gather(*(self._send_share(messages[i::n]) for i in range(n)))
        return [o for share in shares for o in share]

    async def _send_share(self, share: list[Outbound]) -> list[Outcome]:
        holder = _Holder()
        try:
            return [await self._send_one(m, holder) for m in share]
        finally:
            if holder.conn is not None and holder.conn.is_connected:
                self._idle.append(holder.conn)

    async def _send_one(self, m: Outbound, holder: _Holder) -> Outcome:
        raw = render(m, self.sender, self.unsubscribe_url, datetime.now(UTC))
        attempt = 1
        while True:
            try:
                if holder.conn is None:
                    holder.conn = await self._connect()
                return await self._transaction(holder, m, raw)
            except (Throttled, Transient) as exc:
                if holder.conn is not None and not holder.conn.is_connected:
                    self._drop(holder)
                if attempt >= self.backoff.attempts:
                    return Outcome(m.consumer_id, "failed", None, f"{SMTP_UNAVAILABLE}: {exc}")
                await asyncio.sleep(self.backoff.delay(attempt, exc.retry_after, self._rng.random()))
                attempt += 1
            except Ambiguous as exc:
                self._drop(holder)
                return Outcome(m.consumer_id, "unknown", None, f"{AMBIGUOUS}: {exc}")

    async def _reset(self, holder: _Holder) -> None:
        try:
            await holder.conn.rset()
        except (aiosmtplib.SMTPException, OSError):
            self._drop(holder)

    async def _transaction(self, holder: _Holder, m: Outbound, raw: bytes) -> Outcome:
        conn = holder.conn
        # MAIL and RCPT: until DATA ends nothing can be delivered, so a drop here is only transient.
        try:
            await conn.mail(self.sender)
            await conn.rcpt(m.address)
        except aiosmtplib.SMTPSenderRefused as exc:
            err = classify_smtp(exc.code, exc.message)
            await self._reset(holder)
            if isinstance(err, Permanent):
                from sluice.activities import errors

                raise errors.provider_refused(self.name, f"sender refused: {exc.code} {exc.message}") from exc
            raise err from exc
        except aiosmtplib.SMTPResponseException as exc:
            err = classify_smtp(exc.code, exc.message)
            await self._reset(holder)
            if isinstance(err, Permanent):
                return Outcome(m.consumer_id, "failed", None, err.reason)
            raise err from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._drop(holder)
            raise Transient(f"{type(exc).__name__}: {exc}") from exc
        try:
            await conn.data(raw)
        except aiosmtplib.SMTPResponseException as exc:
            # An answer came: the server did not take the message.
            err = classify_smtp(exc.code, exc.message)
            if not conn.is_connected:
                self._drop(holder)
            if isinstance(err, Permanent):
                return Outcome(m.consumer_id, "failed", None, err.reason)
            raise err from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise Ambiguous(f"during DATA: {type(exc).__name__}") from exc
        return Outcome(m.consumer_id, "sent", message_id(m, self.sender.rpartition("@")[2] or "localhost"))

    async def reconcile(self, messages: list[Outbound]) -> list[Outcome]:
        """SMTP cannot be asked what it has: every message stays `unknown`, and none is resent."""
        return [Outcome(m.consumer_id, "unknown", None, SMTP_NO_LOOKUP) for m in messages]
