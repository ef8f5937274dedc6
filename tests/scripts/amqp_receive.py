#!/usr/bin/python3
"""Receives AMQP 1.0 messages with Qpid Proton, accepting each, and prints them as JSON lines.

    amqp_receive.py URL ADDRESS COUNT

Prints `READY` once the receiving link is attached, then one JSON object per message:
{"body", "subject", "correlation_id", "reply_to", "properties"}. Exits after COUNT messages, or
with status 2 when the link is refused (printing {"error": ...}).
"""
import json
import sys

from proton.handlers import MessagingHandler
from proton.reactor import Container


class Receive(MessagingHandler):
    def __init__(self, url, address, count):
        super().__init__()
        self.url, self.address, self.count = url, address, count
        self.received = 0
        self.failed = False

    def on_start(self, event):
        conn = event.container.connect(self.url, allowed_mechs="ANONYMOUS")
        event.container.create_receiver(conn, self.address)

    def on_link_opened(self, event):
        if event.receiver:
            print("READY", flush=True)

    def on_message(self, event):
        m = event.message
        body = m.body
        if isinstance(body, (bytes, memoryview)):
            body = bytes(body).decode("utf-8", "replace")
        props = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (m.properties or {}).items()}
        cid = m.correlation_id
        if isinstance(cid, bytes):
            cid = cid.decode("utf-8", "replace")
        print(json.dumps({
            "body": body,
            "subject": m.subject,
            "correlation_id": cid,
            "reply_to": m.reply_to,
            "properties": props,
        }, default=str), flush=True)
        self.received += 1
        if self.received >= self.count:
            event.connection.close()

    def on_link_error(self, event):
        cond = event.link.remote_condition
        print(json.dumps({"error": cond.name if cond else "link error"}), flush=True)
        self.failed = True
        event.connection.close()


def main():
    url, address, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    handler = Receive(url, address, count)
    Container(handler).run()
    sys.exit(2 if handler.failed else 0)


if __name__ == "__main__":
    main()
