#!/usr/bin/env python3
"""Mock upstream for the authproxy end-to-end tests (standard library only).

    python3 mock_upstream.py [--port N] [--tls CERT KEY] [--token VALUE]

Prints "PORT <n>" on stdout once listening, then nothing else on stdout.
One thread per connection, minimal HTTP/1.1 parsing of our own so that every byte is under
control; keep-alive; bodies streamed (1 GiB in either direction without holding it).

Endpoints (any method unless noted; HEAD works on every path and sends no body):
  /echo, */echo, /   request as JSON: method, target, version, headers [[n, v]...],
                     body_length, body_sha256, tls, sni, hop_by_hop (hop-by-hop header names
                     received, Connection included)
  /upload            same JSON as /echo (the body is hashed while streaming)
  /bytes?n=N         N pattern bytes with Content-Length, written in 1 MiB pieces
  /chunked?n=N[&chunk=S][&ext=1][&trailer=1]  N pattern bytes, chunked (chunk size S, default
                     65536), optionally with chunk extensions and trailer fields
  /close?n=N         N pattern bytes, neither Content-Length nor chunked: ends with the close
  /reset[?chunked=1] head announcing 1000 bytes (or chunked) + 100 bytes, then a TCP RST
  /upload_reset      reads ~100 KB of the request body, then resets the connection
  /drop              reads the request, closes without answering
  /closeafter?ms=N   a keep-alive response, then the connection is closed N ms later
  /armdrop           answers, then drops the next request on this connection unanswered
  /bigheaders?n=N&size=S  N response headers X-Big-<i> of about S bytes each
  /clte              Content-Length: 3 and Transfer-Encoding: chunked ("hello world"), close
  /badcl             two conflicting Content-Length headers, close
  /early             103 Early Hints, then 200
  /garbage           answers with bytes that are not HTTP, then closes
  /status?code=N[&cl=M]  that status; 204/304 without body (304 with Content-Length M if given)
  /sleep?ms=N        answers after N ms
  /hop               a response carrying hop-by-hop headers (and X-Resp-E2E: yes)
  /token             OAuth token endpoint: {"access_token": <--token>, "expires_in": 3600}
  /token_reject      401 {"error": "invalid_client"}
  /__stats           {"connections", "requests", "targets" (last 200), "tls_handshakes",
                      "token_requests"}; requests to /__stats are not counted
A request carrying "X-Mock-Close: 1" is answered with Connection: close.
Requests with "Expect: 100-continue" get "HTTP/1.1 100 Continue" before the body is read.
"""
import argparse
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

BLOCK = 1 << 20
_BASE = hashlib.shake_256(b"authproxy-e2e-pattern").digest(BLOCK)


def pattern_block(k):
    """The k-th 1 MiB block of the test pattern: the block index then fixed noise."""
    return k.to_bytes(8, "big") + _BASE[8:]


def pattern_sha256(n):
    h = hashlib.sha256()
    k = 0
    while n > 0:
        b = pattern_block(k)
        take = min(n, BLOCK)
        h.update(memoryview(b)[:take])
        n -= take
        k += 1
    return h.hexdigest()


class BadRequest(Exception):
    pass


class Closed(Exception):
    pass


class Reader:
    """Buffered reading from a socket with bounded line reads."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.rbuf = bytearray(BLOCK)

    def _fill(self):
        n = self.sock.recv_into(self.rbuf, BLOCK)
        if n == 0:
            raise Closed()
        self.buf += memoryview(self.rbuf)[:n]

    def read_head(self, limit=1 << 20):
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head = bytes(self.buf[: i + 4])
                del self.buf[: i + 4]
                return head
            if len(self.buf) > limit:
                raise BadRequest("head too large")
            self._fill()

    def read_line(self, limit=65536):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if len(self.buf) > limit:
                raise BadRequest("line too long")
            self._fill()

    def stream(self, n, sink):
        """Feeds exactly n bytes to sink (a callable taking a memoryview)."""
        if self.buf:
            take = min(n, len(self.buf))
            sink(memoryview(self.buf)[:take])
            del self.buf[:take]
            n -= take
        view = memoryview(self.rbuf)
        while n > 0:
            got = self.sock.recv_into(view, min(n, BLOCK))
            if got == 0:
                raise Closed()
            sink(view[:got])
            n -= got


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self.tls_handshakes = 0
        self.targets = []
        self.token_requests = []
        self.sni = []

    def snapshot(self):
        with self.lock:
            return {
                "connections": self.connections,
                "requests": self.requests,
                "tls_handshakes": self.tls_handshakes,
                "targets": list(self.targets[-200:]),
                "token_requests": list(self.token_requests),
                "sni": list(self.sni[-50:]),
            }


STATS = Stats()
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te",
              "trailer", "upgrade"}
TOKEN = "mock-token-value"


def status_text(code):
    return {
        100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
        302: "Found", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
        403: "Forbidden", 404: "Not Found", 500: "Internal Server Error", 502: "Bad Gateway",
        503: "Service Unavailable",
    }.get(code, "Status")


class Conn:
    def __init__(self, sock, tls_ctx):
        self.sock = sock
        self.tls_ctx = tls_ctx
        self.sni = None
        self.counted = False
        self.drop_next = False

    def send_response(self, code, headers, body=b"", head_only=False):
        lines = ["HTTP/1.1 %d %s" % (code, status_text(code))]
        for k, v in headers:
            lines.append("%s: %s" % (k, v))
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if body and not head_only:
            data += body
        self.sock.sendall(data)

    def json_response(self, obj, code=200, head_only=False, extra=()):
        body = json.dumps(obj).encode()
        self.send_response(code, [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))] + list(extra),
                           body, head_only)

    def run(self):
        try:
            if self.tls_ctx is not None:
                self.sock.settimeout(10)
                try:
                    self.sock = self.tls_ctx.wrap_socket(self.sock, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                self.sock.settimeout(None)
                self.sni = getattr(threading.current_thread(), "mock_sni", None)
                with STATS.lock:
                    STATS.tls_handshakes += 1
                    STATS.sni.append(self.sni)
            self.reader = Reader(self.sock)
            while True:
                if not self.one_request():
                    break
        except (Closed, ConnectionError, BrokenPipeError, ssl.SSLError, OSError):
            pass
        except BadRequest as e:
            try:
                self.send_response(400, [("Content-Length", "0"), ("Connection", "close")])
            except OSError:
                pass
            sys.stderr.write("mock: bad request: %s\n" % e)
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def one_request(self):
        head = self.reader.read_head()
        lines = head[:-4].split(b"\r\n")
        try:
            method, target, version = lines[0].decode("latin-1").split(" ")
        except ValueError:
            raise BadRequest("request line %r" % lines[0][:200])
        headers = []
        for ln in lines[1:]:
            name, sep, value = ln.decode("latin-1").partition(":")
            if not sep:
                raise BadRequest("header line %r" % ln[:200])
            headers.append([name, value.strip(" \t")])
        hmap = {}
        for k, v in headers:
            hmap.setdefault(k.lower(), []).append(v)
        parts = urlsplit(target)
        path = parts.path
        q = parse_qs(parts.query)

        def qi(name, default):
            try:
                return int(q.get(name, [default])[0])
            except (TypeError, ValueError):
                return default

        internal = path == "/__stats"
        with STATS.lock:
            if not internal:
                if not self.counted:
                    self.counted = True
                    STATS.connections += 1
                STATS.requests += 1
                STATS.targets.append(method + " " + target)
        conn_tokens = [t.strip().lower() for v in hmap.get("connection", []) for t in v.split(",")]
        keep = version == "HTTP/1.1" and "close" not in conn_tokens
        if version == "HTTP/1.0" and "keep-alive" in conn_tokens:
            keep = True
        head_only = method == "HEAD"

        # request body
        te = ",".join(hmap.get("transfer-encoding", [])).lower()
        cl = hmap.get("content-length")
        hasher = hashlib.sha256()
        total = [0]

        def sink(mv):
            hasher.update(mv)
            total[0] += len(mv)

        has_body = bool(te) or (cl is not None and cl[0].strip() != "0")
        if has_body and any(v.lower() == "100-continue" for v in hmap.get("expect", [])):
            if path != "/__no_continue":
                self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if path == "/upload_reset":
            # reads about 100 KB of the body, then resets the connection
            left = [100000]

            def count(mv):
                left[0] -= len(mv)
            try:
                while left[0] > 0:
                    self.reader.stream(min(left[0], 8192), count)
            except Closed:
                pass
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if path == "/drop" or self.drop_next:
            # the request is read (head only) and the connection dropped
            return False
        if "chunked" in te:
            while True:
                line = self.reader.read_line()
                size_s = line.split(b";")[0].strip()
                try:
                    size = int(size_s, 16)
                except ValueError:
                    raise BadRequest("chunk size %r" % line[:100])
                if size == 0:
                    while self.reader.read_line() != b"":  # trailers
                        pass
                    break
                self.reader.stream(size, sink)
                if self.reader.read_line() != b"":
                    raise BadRequest("chunk data not followed by CRLF")
        elif cl is not None:
            try:
                n = int(cl[0])
            except ValueError:
                raise BadRequest("content-length %r" % cl[0])
            self.reader.stream(n, sink)

        if path in ("/token", "/token_reject"):
            with STATS.lock:
                STATS.token_requests.append({"headers": headers, "body_length": total[0]})
            extra = [] if keep else [("Connection", "close")]
            if path == "/token":
                self.json_response({"access_token": TOKEN, "token_type": "Bearer",
                                    "expires_in": 3600}, extra=extra)
            else:
                self.json_response({"error": "invalid_client",
                                    "error_description": "client authentication failed"},
                                   code=401, extra=extra)
            return keep

        if hmap.get("x-mock-close"):
            keep = False
        extra = [] if keep else [("Connection", "close")]
        if path == "/__stats":
            self.json_response(STATS.snapshot(), extra=extra)
        elif path in ("/echo", "/upload") or path.endswith("/echo") or path == "/":
            self.json_response({
                "method": method, "target": target, "path": path, "query": parts.query,
                "version": version, "headers": headers, "body_length": total[0],
                "body_sha256": hasher.hexdigest(), "tls": self.tls_ctx is not None,
                "sni": self.sni,
                "hop_by_hop": sorted({k.lower() for k, _ in headers
                                      if k.lower() in HOP_BY_HOP or k.lower() in conn_tokens}),
            }, head_only=head_only, extra=extra)
        elif path == "/bytes":
            n = qi("n", 0)
            self.send_response(200, [("Content-Type", "application/octet-stream"),
                                     ("Content-Length", str(n))] + extra)
            if not head_only:
                self.send_pattern(n, chunked=False)
        elif path == "/chunked":
            n = qi("n", 0)
            chunk = max(1, qi("chunk", 65536))
            self.send_response(200, [("Content-Type", "application/octet-stream"),
                                     ("Transfer-Encoding", "chunked")] + extra)
            if not head_only:
                self.send_pattern(n, chunked=True, chunk=chunk,
                                  ext=q.get("ext", ["0"])[0] == "1")
                if q.get("trailer", ["0"])[0] == "1":
                    self.sock.sendall(b"0\r\nX-Trailer-One: 1\r\nX-Trailer-Two: 2\r\n\r\n")
                else:
                    self.sock.sendall(b"0\r\n\r\n")
        elif path == "/close":
            n = qi("n", 0)
            self.send_response(200, [("Content-Type", "application/octet-stream")])
            if not head_only:
                self.send_pattern(n, chunked=False)
            return False
        elif path == "/reset":
            if q.get("chunked", ["0"])[0] == "1":
                self.send_response(200, [("Transfer-Encoding", "chunked")])
                self.sock.sendall(b"64\r\n" + b"r" * 100 + b"\r\n")
            else:
                self.send_response(200, [("Content-Length", "1000")])
                self.sock.sendall(b"r" * 100)
            time.sleep(0.3)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        elif path == "/bigheaders":
            n, size = qi("n", 30), qi("size", 1000)
            hdrs = [("X-Big-%d" % i, ("%d" % i) * (size // len(str(i)))) for i in range(n)]
            body = b"big headers"
            self.send_response(200, hdrs + [("Content-Length", str(len(body)))] + extra, body,
                               head_only)
        elif path == "/clte":
            # both Content-Length and chunked: the chunked framing is the real one
            self.send_response(200, [("Content-Length", "3"), ("Transfer-Encoding", "chunked")])
            self.sock.sendall(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            return False
        elif path == "/badcl":
            self.send_response(200, [("Content-Length", "5"), ("Content-Length", "6")])
            self.sock.sendall(b"hello!")
            return False
        elif path == "/armdrop":
            self.drop_next = True
            self.send_response(200, [("Content-Length", "5")] + extra, b"armed", head_only)
        elif path == "/closeafter":
            body = b"closing soon"
            self.send_response(200, [("Content-Length", str(len(body)))], body, head_only)
            time.sleep(qi("ms", 100) / 1000.0)
            return False
        elif path == "/early":
            self.sock.sendall(b"HTTP/1.1 103 Early Hints\r\n"
                              b"Link: </style.css>; rel=preload\r\n\r\n")
            time.sleep(0.05)
            body = b"after early hints"
            self.send_response(200, [("Content-Length", str(len(body)))] + extra, body, head_only)
        elif path == "/conn_cl":  # names its own Content-Length in Connection
            self.sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\n"
                              b"Content-Length: 5\r\n\r\nhello")
        elif path == "/interim_body":  # a 100 that claims a body, then the real answer
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n"
                              b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
        elif path == "/status000":
            self.sock.sendall(b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n")
            return False
        elif path == "/garbage":
            self.sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
            return False
        elif path == "/status":
            code = qi("code", 200)
            hdrs = [("X-Mock-Status", str(code))]
            if code in (204, 304) or 100 <= code < 200:
                if code == 304:
                    hdrs.append(("ETag", '"v1"'))
                    if "cl" in q:
                        hdrs.append(("Content-Length", str(qi("cl", 0))))
                self.send_response(code, hdrs + extra)
            else:
                body = b'{"status": %d}' % code
                self.send_response(code, hdrs + [("Content-Type", "application/json"),
                                                 ("Content-Length", str(len(body)))] + extra,
                                   body, head_only)
        elif path == "/sleep":
            time.sleep(qi("ms", 0) / 1000.0)
            body = b"slept"
            self.send_response(200, [("Content-Length", str(len(body)))] + extra, body, head_only)
        elif path == "/hop":
            body = b"hop"
            self.send_response(200, [
                ("Connection", "X-Resp-Hop"),
                ("X-Resp-Hop", "1"),
                ("Keep-Alive", "timeout=5, max=100"),
                ("Proxy-Connection", "keep-alive"),
                ("Proxy-Authorization", "Basic cmVzcDpob3A="),
                ("Upgrade", "foo/1"),
                ("Trailer", "X-Trailer-Field"),
                ("TE", "trailers"),
                ("X-Resp-E2E", "yes"),
                ("Content-Length", str(len(body))),
            ] + extra, body, head_only)
        else:
            body = b'{"error": "mock: no such path"}'
            self.send_response(404, [("Content-Type", "application/json"),
                                     ("Content-Length", str(len(body)))] + extra, body, head_only)
        return keep

    def send_pattern(self, n, chunked, chunk=65536, ext=False):
        k = 0
        while n > 0:
            block = pattern_block(k)
            take = min(n, BLOCK)
            mv = memoryview(block)[:take]
            if chunked:
                off = 0
                while off < take:
                    c = min(chunk, take - off)
                    self.sock.sendall(b"%x;ext=\"v\"\r\n" % c if ext else b"%x\r\n" % c)
                    self.sock.sendall(mv[off:off + c])
                    self.sock.sendall(b"\r\n")
                    off += c
            else:
                self.sock.sendall(mv)
            n -= take
            k += 1


def main():
    global TOKEN
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--token", default=TOKEN)
    args = ap.parse_args()
    TOKEN = args.token
    tls_ctx = None
    if args.tls:
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_ctx.load_cert_chain(args.tls[0], args.tls[1])

        def on_sni(sslobj, name, ctx):
            # runs inside wrap_socket, on the connection's own thread
            threading.current_thread().mock_sni = name

        tls_ctx.sni_callback = on_sni
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", args.port))
    ls.listen(256)
    sys.stdout.write("PORT %d\n" % ls.getsockname()[1])
    sys.stdout.flush()

    def serve(sock):
        for opt, val in ((socket.SO_SNDBUF, 4 << 20), (socket.SO_RCVBUF, 4 << 20)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, val)
            except OSError:
                pass
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Conn(sock, tls_ctx).run()

    while True:
        try:
            s, _ = ls.accept()
        except InterruptedError:
            continue
        except OSError:
            time.sleep(0.01)
            continue
        t = threading.Thread(target=serve, args=(s,), daemon=True)
        t.start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        os._exit(0)
