"""The Standard Webhooks implementations of PyPI's `standardwebhooks` and `svix` packages,
independent of edgehook's code, over standard input and output: one JSON request a line, one
JSON answer a line.
  {"op": "verify", "lib": "svix"|"standardwebhooks", "secret": S, "headers": {..}, "body": B64}
    -> {"ok": true} or {"ok": false, "error": "..."}
  {"op": "sign", "lib": ..., "secret": S, "id": ID, "timestamp": UNIX, "body": B64}
    -> {"signature": "v1,..."}
Bodies travel as base64 so that they arrive byte for byte."""

import base64
import datetime
import json
import sys

from standardwebhooks.webhooks import Webhook as StandardWebhook
from svix.webhooks import Webhook as SvixWebhook

LIBS = {"standardwebhooks": StandardWebhook, "svix": SvixWebhook}


def answer(req):
    lib = LIBS[req["lib"]](req["secret"])
    body = base64.b64decode(req["body"])
    if req["op"] == "verify":
        try:
            lib.verify(body, req["headers"])
            return {"ok": True}
        except Exception as e:  # each library raises its own WebhookVerificationError
            return {"ok": False, "error": repr(e)}
    when = datetime.datetime.fromtimestamp(req["timestamp"], tz=datetime.timezone.utc)
    return {"signature": lib.sign(req["id"], when, body.decode("utf-8"))}


for line in sys.stdin:
    print(json.dumps(answer(json.loads(line))), flush=True)
