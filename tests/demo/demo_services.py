#!/usr/bin/env python3
"""The bundled demo for `make run`: a tiny OAuth 2.0 token endpoint (client_credentials, HTTP
Basic client auth, 1-hour tokens) and an API that accepts only the tokens it minted.

  python3 demo_services.py TOKEN_PORT API_PORT      (client id/secret from DEMO_CLIENT_ID/_SECRET)

GET /whoami on the API answers which client the bearer token was minted for, with a short
SHA-256 fingerprint of the token (never the token itself)."""
import base64
import hashlib
import http.server
import json
import os
import secrets
import sys
import threading
import time
import urllib.parse

CLIENT_ID = os.environ["DEMO_CLIENT_ID"]
CLIENT_SECRET = os.environ["DEMO_CLIENT_SECRET"]
TTL = 3600
tokens = {}  # token -> (client, expiry)
lock = threading.Lock()


def reply(h, status, obj, extra=()):
    body = json.dumps(obj).encode() + b"\n"
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    for k, v in extra:
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


class Token(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(n).decode())
        auth = self.headers.get("Authorization", "")
        ok = False
        if auth.startswith("Basic "):
            cid, _, sec = base64.b64decode(auth[6:]).decode().partition(":")
            ok = (urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(sec)) == (CLIENT_ID, CLIENT_SECRET)
        if self.path != "/token" or form.get("grant_type") != ["client_credentials"]:
            return reply(self, 400, {"error": "unsupported_grant_type"})
        if not ok:
            return reply(self, 401, {"error": "invalid_client"})
        tok = secrets.token_urlsafe(24)
        with lock:
            tokens[tok] = (CLIENT_ID, time.time() + TTL)
        print("demo provider: minted a token for %s" % CLIENT_ID, flush=True)
        reply(self, 200, {"access_token": tok, "token_type": "Bearer", "expires_in": TTL})


class Api(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        auth = self.headers.get("Authorization", "")
        tok = auth[7:] if auth.startswith("Bearer ") else ""
        with lock:
            who = tokens.get(tok)
        if not who or who[1] < time.time():
            return reply(self, 401, {"error": "invalid_token"},
                         [("WWW-Authenticate", 'Bearer error="invalid_token"')])
        reply(self, 200, {"authenticated": True, "client": who[0], "path": self.path,
                          "token_sha256": hashlib.sha256(tok.encode()).hexdigest()[:12],
                          "via": self.headers.get("Via")})


def main():
    tp, ap = int(sys.argv[1]), int(sys.argv[2])
    for cls, port in ((Token, tp), (Api, ap)):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), cls)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("demo provider on 127.0.0.1:%d, demo API on 127.0.0.1:%d" % (tp, ap), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
