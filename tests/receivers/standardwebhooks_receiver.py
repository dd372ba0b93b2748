"""A webhook receiver built on the Standard Webhooks reference library (PyPI `standardwebhooks`),
independent of edgehook's own code. It prints `listening PORT`, then one line per request:
`ok <webhook-id>` when the library accepts the signature, `bad <webhook-id> <reason>` otherwise.
Usage: standardwebhooks_receiver.py SECRET"""

import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook

SECRET = sys.argv[1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            Webhook(SECRET).verify(body, headers)
            print("ok", headers.get("webhook-id"), flush=True)
            self.send_response(204)
        except Exception as e:  # the library raises WebhookVerificationError
            print("bad", headers.get("webhook-id"), repr(e), flush=True)
            self.send_response(401)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
