"""A real SMTP server on loopback (aiosmtpd) standing in for the email provider, with faults on purpose.

It counts what it accepted per recipient (a message is accepted when its DATA is
answered 250), keeps each accepted message's bytes, counts connections, and can
refuse recipients for good (550), defer them once (451), drop the connection at a
MAIL command (nothing taken: the client must try again) or during DATA before
taking the message (the client cannot know: `unknown`).
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import default as default_policy

from aiosmtpd.controller import Controller


@dataclass
class SmtpFaults:
    refuse: set[str] = field(default_factory=set)  # 550 at RCPT
    defer_once: set[str] = field(default_factory=set)  # 451 at RCPT the first time
    drop_at_mail: set[int] = field(default_factory=set)  # the n-th MAIL command (1-based) drops the connection
    drop_in_data: set[str] = field(default_factory=set)  # drop during DATA without taking the message


class Inbox:
    """The aiosmtpd handler: what the server took, per recipient."""

    def __init__(self, faults: SmtpFaults | None = None):
        self.faults = faults or SmtpFaults()
        self.received = Counter()  # recipient -> messages accepted
        self.messages: dict[str, list] = {}  # recipient -> parsed accepted messages
        self.sessions: set[int] = set()
        self.mails = 0
        self.deferred: set[str] = set()
        self.dropped: Counter = Counter()
        self._lock = threading.Lock()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self._lock:
            self.mails += 1
            n = self.mails
            self.sessions.add(id(session))
        if n in self.faults.drop_at_mail:
            self.dropped["mail"] += 1
            server.transport.close()
            return "421 4.3.0 closing"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.faults.refuse:
            return "550 5.1.1 mailbox unavailable"
        if address in self.faults.defer_once and address not in self.deferred:
            self.deferred.add(address)
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        rcpts = list(envelope.rcpt_tos)
        if any(r in self.faults.drop_in_data for r in rcpts):
            self.dropped["data"] += 1
            server.transport.close()
            return "421 4.3.0 closing"
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=default_policy)
        with self._lock:
            for r in rcpts:
                self.received[r] += 1
                self.messages.setdefault(r, []).append(msg)
        return "250 2.0.0 queued"


class SmtpServer:
    def __init__(self, faults: SmtpFaults | None = None, handler=None):
        self.inbox = handler or Inbox(faults)
        self.port = _free_port()
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
