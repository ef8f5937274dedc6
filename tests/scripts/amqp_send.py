#!/usr/bin/python3
"""Sends AMQP 1.0 messages with Qpid Proton and prints each one's outcome as JSON.

    amqp_send.py URL ADDRESS [USER PASSWORD] < messages.json

For amqps:// URLs, AMQP_SEND_CA names the CA file the server is verified against, and
AMQP_SEND_CERT and AMQP_SEND_KEY a client certificate; with a certificate and no USER the login
is SASL EXTERNAL.

messages.json is a list of objects with optional keys: body (a string, sent as amqp-value),
data (a string, sent as a data section), id, correlation_id, subject, content_type, reply_to,
properties (application properties), annotations (message annotations). The output is a list, in
order, of {"state": "accepted" | "rejected" | "released" | "modified", "condition", "description"},
or {"error": ...} when the link or connection failed first.
"""
import json
import os
import sys

from proton import Message, SSLDomain, symbol
from proton.handlers import MessagingHandler
from proton.reactor import Container


class Send(MessagingHandler):
    def __init__(self, url, address, messages, user, password):
        super().__init__(auto_settle=True)
        self.url, self.address, self.messages = url, address, messages
        self.user, self.password = user, password
        self.outcomes = [None] * len(messages)
        self.sent = 0
        self.error = None

    def on_start(self, event):
        kwargs = {}
        cert = os.environ.get("AMQP_SEND_CERT")
        if self.user is not None:
            kwargs = dict(user=self.user, password=self.password, allowed_mechs="PLAIN")
        elif cert:
            kwargs = dict(allowed_mechs="EXTERNAL")
        else:
            kwargs = dict(allowed_mechs="ANONYMOUS")
        if self.url.startswith("amqps://"):
            domain = SSLDomain(SSLDomain.MODE_CLIENT)
            domain.set_trusted_ca_db(os.environ["AMQP_SEND_CA"])
            # The certificate is checked against the CA; the tests connect by IP address.
            domain.set_peer_authentication(SSLDomain.VERIFY_PEER)
            if cert:
                domain.set_credentials(cert, os.environ["AMQP_SEND_KEY"], None)
            kwargs["ssl_domain"] = domain
        conn = event.container.connect(self.url, **kwargs)
        event.container.create_sender(conn, self.address)

    def on_sendable(self, event):
        while event.sender.credit and self.sent < len(self.messages):
            spec = self.messages[self.sent]
            msg = Message()
            if "data" in spec:
                msg.body = spec["data"].encode()
                msg.inferred = True
            else:
                msg.body = spec.get("body", "")
            msg.id = spec.get("id")
            msg.correlation_id = spec.get("correlation_id")
            msg.subject = spec.get("subject")
            msg.content_type = spec.get("content_type")
            msg.reply_to = spec.get("reply_to")
            msg.properties = spec.get("properties")
            if "annotations" in spec:
                msg.annotations = {symbol(k): v for k, v in spec["annotations"].items()}
            delivery = event.sender.send(msg)
            delivery.index = self.sent
            self.sent += 1

    def _outcome(self, event, state):
        cond = event.delivery.remote.condition
        self.outcomes[event.delivery.index] = {
            "state": state,
            "condition": cond.name if cond else None,
            "description": cond.description if cond else None,
        }
        if all(o is not None for o in self.outcomes):
            event.connection.close()

    def on_accepted(self, event):
        self._outcome(event, "accepted")

    def on_rejected(self, event):
        self._outcome(event, "rejected")

    def on_released(self, event):
        state = "modified" if event.delivery.remote_state == event.delivery.MODIFIED else "released"
        self._outcome(event, state)

    def on_link_error(self, event):
        cond = event.link.remote_condition
        self.error = {"error": "link", "condition": cond.name if cond else None,
                      "description": cond.description if cond else None}
        event.connection.close()

    def on_connection_error(self, event):
        cond = event.connection.remote_condition
        self.error = {"error": "connection", "condition": cond.name if cond else None,
                      "description": cond.description if cond else None}
        event.connection.close()

    def on_transport_error(self, event):
        cond = event.transport.condition
        self.error = {"error": "transport", "condition": cond.name if cond else None,
                      "description": cond.description if cond else None}
        event.connection.close()


def main():
    url, address = sys.argv[1], sys.argv[2]
    user = sys.argv[3] if len(sys.argv) > 4 else None
    password = sys.argv[4] if len(sys.argv) > 4 else None
    messages = json.load(sys.stdin)
    handler = Send(url, address, messages, user, password)
    Container(handler).run()
    print(json.dumps(handler.error if handler.error else handler.outcomes))


main()
