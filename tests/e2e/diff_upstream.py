#!/usr/bin/env python3
"""Upstream for the differential data-path test (tests/e2e/test_differential.py); standard
library only.

    python3 diff_upstream.py [--port N] [--tls CERT KEY]

Prints "PORT <n>" on stdout once listening. One thread per connection, HTTP/1.1 keep-alive,
every byte written by hand. A response is fully determined by its request target, so the
client can compute the expected body (length and SHA-256) itself:

  /d?id=ID&seed=S&n=N&mode=cl|chunked|close
     [&status=C]          status (default 200; 204 and 304 have no body, nor has HEAD)
     [&chunk=K]           chunked: chunk size K, or 0 for sizes drawn from the seed (1..2K)
     [&ext=1]             chunked: chunk extensions on every size line
     [&trailer=1]         chunked: a trailer field "X-Diff-Trailer: <id>"
     [&wsz=W]             bytes per send() (default 1 MiB), so TLS records vary
     [&split=1]           chunk framing in its own send()s (more, smaller TLS records)
     [&sndbuf=B]          SO_SNDBUF for this response
     [&delay_ms=D]        sleeps D ms after reading the request, before the head
     [&pace=P]            writes the body at about P bytes/s
     [&stall_at=B&stall_ms=D]  sleeps D ms once B body bytes have been written
     [&rpace=P]           reads the request body at about P bytes/s
     [&abort_at=B&abort=rst|fin]  after B body bytes: RST (SO_LINGER 0) or a plain close
                          (without the rest, the last chunk or a TLS close_notify)

  Every response carries what the upstream saw of the request: X-Diff-Id, X-Req-Method,
  X-Req-Len and X-Req-Sha256 of the (de-chunked) body, X-Req-Framing (cl, chunked, none),
  X-Req-Ext (chunk extensions seen), X-Req-Trailers (trailer fields seen), X-Req-Via.

  /__log              JSON list of every /d request: id, method, req_len, req_sha256,
                      req_framing, resp (ended: "done", "aborted", "failed" or "reading")
  /__drop_idle        closes every connection that waits for its next request (so the proxy's
                      pooled idle connections go away and its descriptors can be counted)
Bodies: body_bytes(seed, off, n) below (64 KiB blocks: the block index, then noise of the seed).
"""
import argparse
import hashlib
import json
import os
import random
import socket
import ssl
import struct
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

BLK = 1 << 16
_bases = {}
_bases_lock = threading.Lock()


def _base(seed):
    with _bases_lock:
        b = _bases.get(seed)
        if b is None:
            if len(_bases) > 64:
                _bases.clear()
            b = hashlib.shake_256(b"authproxy-diff-%d" % seed).digest(BLK)
            _bases[seed] = b
        return b


def block(seed, k):
    """The k-th 64 KiB block of the body of seed."""
    return k.to_bytes(8, "big") + _base(seed)[8:]


def body_bytes(seed, off, n):
    """Bytes [off, off + n) of the body of seed."""
    out = []
    while n > 0:
        k, o = divmod(off, BLK)
        take = min(n, BLK - o)
        b = block(seed, k)
        out.append(b if (o == 0 and take == BLK) else b[o:o + take])
        off += take
        n -= take
    return b"".join(out)


def body_sha256(seed, n):
    h = hashlib.sha256()
    off = 0
    while off < n:
        take = min(n - off, 1 << 20)
        h.update(body_bytes(seed, off, take))
        off += take
    return h.hexdigest()


def chunk_sizes(seed, n, chunk):
    """The chunk sizes of an n-byte chunked body (chunk 0: drawn from the seed, 1..131072)."""
    if chunk > 0:
        full, rest = divmod(n, chunk)
        return [chunk] * full + ([rest] if rest else [])
    rnd = random.Random(seed * 7919 + 17)
    out, left = [], n
    while left > 0:
        c = min(left, rnd.choice((1, 7, 100, 1000, 4096, 16384, 16385, 32768, 65536, 131072,
                                  rnd.randint(1, 131072))))
        out.append(c)
        left -= c
    return out


class Closed(Exception):
    pass


class BadRequest(Exception):
    pass


class Reader:
    def __init__(self, sock, conn):
        self.sock = sock
        self.conn = conn
        self.buf = bytearray()

    def _fill(self, idle_ok=False):
        while True:
            try:
                d = self.sock.recv(1 << 18)
            except socket.timeout:
                # between requests a connection is idle; /__drop_idle ends those
                if idle_ok and not self.buf and STATE.drop_gen != self.conn.drop_seen:
                    raise Closed()
                continue
            break
        if not d:
            raise Closed()
        self.buf += d

    def head(self):
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                h = bytes(self.buf[:i + 4])
                del self.buf[:i + 4]
                return h
            if len(self.buf) > 1 << 20:
                raise BadRequest("head too large")
            self._fill(idle_ok=True)

    def line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                ln = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return ln
            if len(self.buf) > 65536:
                raise BadRequest("line too long")
            self._fill()

    def stream(self, n, sink, pace=0):
        t0, done = time.monotonic(), 0
        while n > 0:
            if not self.buf:
                self._fill()
            take = min(n, len(self.buf), 65536 if pace else 1 << 30)
            sink(memoryview(self.buf)[:take])
            del self.buf[:take]
            n -= take
            done += take
            if pace:
                ahead = done / pace - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.log = []
        self.drop_gen = 0


STATE = State()


class Conn:
    def __init__(self, sock, tls_ctx):
        self.sock = sock
        self.tls_ctx = tls_ctx
        self.drop_seen = STATE.drop_gen

    def run(self):
        try:
            if self.tls_ctx is not None:
                self.sock.settimeout(10)
                try:
                    self.sock = self.tls_ctx.wrap_socket(self.sock, server_side=True)
                except (ssl.SSLError, OSError):
                    return
            self.sock.settimeout(0.2)
            self.reader = Reader(self.sock, self)
            while self.one():
                self.drop_seen = STATE.drop_gen
        except (Closed, ConnectionError, ssl.SSLError, OSError):
            pass
        except BadRequest as e:
            sys.stderr.write("diff upstream: bad request: %s\n" % e)
            try:
                self.sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                  b"Connection: close\r\n\r\n")
            except OSError:
                pass
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def send(self, data):
        """Writes all of data (within the socket's timeout: 60 s inside a request)."""
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise Closed()  # part of it may have gone: the connection is of no further use

    def one(self):
        head = self.reader.head()
        self.sock.settimeout(60)  # inside a request: reads and writes wait for the proxy
        lines = head[:-4].split(b"\r\n")
        try:
            method, target, version = lines[0].decode("latin-1").split(" ")
        except ValueError:
            raise BadRequest("request line %r" % lines[0][:200])
        hmap = {}
        for ln in lines[1:]:
            k, sep, v = ln.decode("latin-1").partition(":")
            if not sep:
                raise BadRequest("header line %r" % ln[:200])
            hmap.setdefault(k.strip().lower(), []).append(v.strip(" \t"))
        parts = urlsplit(target)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}

        def qi(name, default=0):
            try:
                return int(q.get(name, default))
            except ValueError:
                return default

        te = ",".join(hmap.get("transfer-encoding", [])).lower()
        cl = hmap.get("content-length")
        h = hashlib.sha256()
        total = [0]

        def sink(mv):
            h.update(mv)
            total[0] += len(mv)

        rpace = qi("rpace")
        ext = trailers = 0
        if "chunked" in te:
            framing = "chunked"
            while True:
                ln = self.reader.line()
                size_s, semi, _ = ln.partition(b";")
                if semi:
                    ext += 1
                try:
                    size = int(size_s.strip(), 16)
                except ValueError:
                    raise BadRequest("chunk size %r" % ln[:100])
                if size == 0:
                    while self.reader.line() != b"":
                        trailers += 1
                    break
                self.reader.stream(size, sink, rpace)
                if self.reader.line() != b"":
                    raise BadRequest("chunk data not followed by CRLF")
        elif cl is not None:
            framing = "cl"
            try:
                n = int(cl[0])
            except ValueError:
                raise BadRequest("content-length %r" % cl[0])
            self.reader.stream(n, sink, rpace)
        else:
            framing = "none"

        conn_tokens = [t.strip().lower() for v in hmap.get("connection", []) for t in v.split(",")]
        keep = version == "HTTP/1.1" and "close" not in conn_tokens

        if parts.path == "/__log":
            with STATE.lock:
                body = json.dumps(STATE.log).encode()
            self.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n%s\r\n" % (len(body), b"" if keep else
                                                         b"Connection: close\r\n") + body)
            self.sock.settimeout(0.2)
            return keep
        if parts.path == "/__drop_idle":
            with STATE.lock:
                STATE.drop_gen += 1
            self.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            return False
        if parts.path != "/d":
            self.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n%s\r\n"
                      % (b"" if keep else b"Connection: close\r\n"))
            self.sock.settimeout(0.2)
            return keep

        rid = q.get("id", "?")
        rec = {"id": rid, "method": method, "req_len": total[0], "req_sha256": h.hexdigest(),
               "req_framing": framing, "req_ext": ext, "req_trailers": trailers,
               "resp": "reading"}
        with STATE.lock:
            STATE.log.append(rec)
        t0 = time.monotonic()
        try:
            keep = self.respond(method, q, qi, rid, rec, keep, hmap)
        except BaseException as e:
            if rec["resp"] == "reading":
                rec["resp"] = "failed: %s: %s" % (type(e).__name__, e)
            raise
        finally:
            rec["seconds"] = round(time.monotonic() - t0, 3)
        self.sock.settimeout(0.2)
        return keep

    def respond(self, method, q, qi, rid, rec, keep, hmap):
        seed, n, mode = qi("seed"), qi("n"), q.get("mode", "cl")
        status = qi("status", 200)
        if qi("sndbuf"):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, qi("sndbuf"))
            except OSError:
                pass
        if qi("delay_ms"):
            time.sleep(qi("delay_ms") / 1000.0)
        bodyless = method == "HEAD" or status in (204, 304)
        hdrs = ["HTTP/1.1 %d %s" % (status, {200: "OK", 201: "Created", 204: "No Content",
                                             304: "Not Modified", 404: "Not Found",
                                             500: "Internal Server Error"}.get(status, "X")),
                "Content-Type: application/octet-stream",
                "X-Diff-Id: %s" % rid,
                "X-Req-Method: %s" % method,
                "X-Req-Len: %d" % rec["req_len"],
                "X-Req-Sha256: %s" % rec["req_sha256"],
                "X-Req-Framing: %s" % rec["req_framing"],
                "X-Req-Ext: %d" % rec["req_ext"],
                "X-Req-Trailers: %d" % rec["req_trailers"],
                "X-Req-Via: %s" % ",".join(hmap.get("via", []))]
        abort_at = qi("abort_at", -1) if "abort_at" in q else -1
        if mode == "close":
            keep = False
        if abort_at >= 0:
            keep = False
        if status in (204, 304):
            pass  # no framing headers at all
        elif mode == "cl":
            hdrs.append("Content-Length: %d" % n)
        elif mode == "chunked":
            hdrs.append("Transfer-Encoding: chunked")
        if not keep:
            hdrs.append("Connection: close")
        self.send(("\r\n".join(hdrs) + "\r\n\r\n").encode("latin-1"))
        if bodyless:
            rec["resp"] = "done"
            return keep

        pace = qi("pace")
        wsz = max(1, qi("wsz", 1 << 20))
        split = q.get("split") == "1"
        stall = [qi("stall_at", -1) if "stall_at" in q else -1]
        stall_ms = qi("stall_ms")
        limit = abort_at if abort_at >= 0 else None
        pos = [0]  # body bytes written
        t0 = time.monotonic()

        def out_body(length):
            """Writes the next length body bytes in wsz pieces, pacing and stalling; False
            once the abort point is reached."""
            end = pos[0] + length
            while True:
                if stall[0] >= 0 and pos[0] == stall[0]:
                    stall[0] = -1
                    time.sleep(stall_ms / 1000.0)
                if limit is not None and pos[0] >= limit:
                    return False
                if pos[0] >= end:
                    return True
                take = min(end - pos[0], wsz)
                if pace:
                    take = min(take, max(1, pace // 100))
                if stall[0] > pos[0]:
                    take = min(take, stall[0] - pos[0])
                if limit is not None:
                    take = min(take, limit - pos[0])
                self.send(body_bytes(seed, pos[0], take))
                pos[0] += take
                if pace:
                    ahead = pos[0] / pace - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)

        def plain_chunk(c):
            """A chunk with nothing to do inside it: framing and data in one write."""
            if split or pace or c > wsz:
                return False
            if limit is not None and pos[0] + c >= limit:
                return False
            return not (stall[0] >= 0 and pos[0] <= stall[0] <= pos[0] + c)

        ok = True
        if mode == "chunked":
            ext = q.get("ext") == "1"
            for c in chunk_sizes(seed, n, qi("chunk", 65536)):
                line = (b"%x;d=\"x\"\r\n" % c) if ext else (b"%x\r\n" % c)
                if plain_chunk(c):
                    self.send(line + body_bytes(seed, pos[0], c) + b"\r\n")
                    pos[0] += c
                    continue
                if limit is not None and pos[0] >= limit:
                    ok = False
                    break
                self.send(line)
                ok = out_body(c)
                if not ok:
                    break
                self.send(b"\r\n")
            if ok and limit is not None and pos[0] >= limit:
                ok = False  # abort_at == n: all the data, never the last chunk
            if ok:
                self.send(b"0\r\nX-Diff-Trailer: %s\r\n\r\n" % rid.encode()
                          if q.get("trailer") == "1" else b"0\r\n\r\n")
        else:
            ok = out_body(n)
            if ok and limit is not None and pos[0] >= limit:
                ok = False
        if not ok:
            rec["resp"] = "aborted"
            if q.get("abort", "rst") == "rst":
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
                except OSError:
                    pass
            # "fin": a plain close (for TLS: no close_notify either)
            try:
                raw = self.sock
                if isinstance(raw, ssl.SSLSocket):
                    # close the descriptor without close_notify
                    fd = raw.detach()
                    os.close(fd)
                else:
                    raw.close()
            except OSError:
                pass
            raise Closed()
        rec["resp"] = "done"
        return keep


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    a = ap.parse_args()
    tls_ctx = None
    if a.tls:
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_ctx.load_cert_chain(a.tls[0], a.tls[1])
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", a.port))
    ls.listen(512)
    sys.stdout.write("PORT %d\n" % ls.getsockname()[1])
    sys.stdout.flush()

    def serve(s):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Conn(s, tls_ctx).run()

    while True:
        try:
            s, _ = ls.accept()
        except OSError:
            time.sleep(0.01)
            continue
        threading.Thread(target=serve, args=(s,), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        os._exit(0)
