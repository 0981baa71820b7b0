#!/usr/bin/env python3
"""Mock OAuth 2.0 token endpoint for the benchmark (plain HTTP on loopback, standard library only).

  token_endpoint.py --token TOKEN [--expires-in 3600] [--port 0] [--port-file FILE]

POST /token     -> 200 {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600}
                   (counts every mint; the request body is read and ignored)
GET  /stats     -> {"mints": N, "in_flight": K, "busy_s": S}  (K: mints not answered yet; S:
                   seconds so far during which at least one mint was in flight)
POST /control   -> JSON body with any of:
                   {"delay_ms": D}     every later mint answers after D ms
                   {"stale_next": K}   the next K mints hand out "stale-<TOKEN>" (the backend
                                       answers 401 to it: drives the 401-replay measurement)
                   {"expires_in": E}   later mints say "expires_in": E (the unit is the
                                       provider's `expires_in_unit`: short-lived tokens)
                   {"reset": true}     mints = 0
It prints "port N" on stdout (and writes N to --port-file) once it listens.
"""
import argparse
import os
import socket
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {"mints": 0, "delay_ms": 0, "stale_next": 0, "expires_in": 3600}
LOCK = threading.Lock()
TOKEN = ""
BUSY = {"in_flight": 0, "since": 0.0, "busy_s": 0.0}  # under LOCK


def busy_s(now):
    return BUSY["busy_s"] + (now - BUSY["since"] if BUSY["in_flight"] else 0.0)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self._headers_buffer.append(b"\r\n" + data)  # head and body in one write
        self.flush_headers()

    def do_GET(self):
        if self.path.startswith("/stats"):
            with LOCK:
                self._send(200, {"mints": STATE["mints"], "in_flight": BUSY["in_flight"],
                                 "busy_s": busy_s(time.monotonic())})
        else:
            self._send(404, {"error": "not_found"})

    def do_POST(self):
        body = self._body()
        if self.path.startswith("/token"):
            with LOCK:
                STATE["mints"] += 1
                delay = STATE["delay_ms"]
                expires_in = STATE["expires_in"]
                stale = STATE["stale_next"] > 0
                if stale:
                    STATE["stale_next"] -= 1
                if BUSY["in_flight"] == 0:
                    BUSY["since"] = time.monotonic()
                BUSY["in_flight"] += 1
            try:
                if delay:
                    time.sleep(delay / 1000.0)
                tok = ("stale-" + TOKEN) if stale else TOKEN
                self._send(200, {"access_token": tok, "token_type": "Bearer",
                                 "expires_in": expires_in})
            finally:
                with LOCK:
                    BUSY["in_flight"] -= 1
                    if BUSY["in_flight"] == 0:
                        BUSY["busy_s"] += time.monotonic() - BUSY["since"]
        elif self.path.startswith("/control"):
            try:
                ctl = json.loads(body or b"{}")
            except ValueError:
                self._send(400, {"error": "bad_json"})
                return
            with LOCK:
                if ctl.get("reset"):
                    STATE["mints"] = 0
                for k in ("delay_ms", "stale_next", "expires_in"):
                    if k in ctl:
                        STATE[k] = int(ctl[k])
                self._send(200, dict(STATE))
        else:
            self._send(404, {"error": "not_found"})


def main():
    global TOKEN
    ap = argparse.ArgumentParser()
    ap.add_argument("--token", required=True)
    ap.add_argument("--expires-in", type=int, default=3600)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    a = ap.parse_args()
    TOKEN = a.token
    STATE["expires_in"] = a.expires_in
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 1024
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    port = srv.server_address[1]
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write("%d\n" % port)
        os.replace(a.port_file + ".tmp", a.port_file)
    sys.stdout.write("port %d\n" % port)
    sys.stdout.flush()
    srv.serve_forever()


if __name__ == "__main__":
    main()
