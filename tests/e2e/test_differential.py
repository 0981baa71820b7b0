"""Differential data-path test: one randomized, seeded workload through four proxies (a plain
and a TLS upstream, each with io_uring as the environment gives it and with
AUTHPROXY_IO_URING=0), failing on any difference in what the clients and the upstreams saw.

The workload (gen_workload) is a list of client connections drawn from random.Random(seed):
each sends 1..8 pipelined requests (GET, HEAD, DELETE, or POST/PUT with 0..8 MiB bodies, by
Content-Length or chunked with random chunk sizes, extensions and trailers; sometimes HTTP/1.0),
with a receive buffer of 4 KiB..1 MiB, a reader throttled to 256 KiB/s..32 MiB/s or not at all,
sometimes a half-close after the last request, sometimes a reset (or close) at a random byte of
what it sends or receives. The upstream (diff_upstream.py) answers each request as its target
says: 0..8 MiB generated from a seed, by Content-Length, chunked (random chunk sizes, write
sizes, extensions, trailers) or until close; paced, delayed, stalled mid-body, or aborted
mid-body (RST or plain close). It reports what it received of each request (length and SHA-256
of the body, its framing, chunk extensions and trailers seen) in the response head and in its
/__log.

Checked, for every connection and every proxy (check_conn):
  - an exchange that is not faulted gets its answer: status, framing (Content-Length as sent,
    chunked well formed and ended, or close-delimited then closed), Connection: close exactly
    where the connection must end, every body byte against the generator (and its SHA-256), the
    trailer, and what the upstream saw of the request (method, length, SHA-256, framing, no
    chunk extensions, no trailers, Via);
  - an exchange whose upstream aborts mid-body ends the client connection with a visibly cut
    response (short Content-Length body, chunked without its last chunk), never a complete one;
    its bytes are a prefix of the body;
  - after a client reset nothing is required, but what arrived before is checked as above;
  - nothing arrives that was not asked for; nothing after a response that ends the connection;
  - the upstream's log: every request it read whole is the one the client sent (per id), none
    twice, none after a response that ended its connection, all of those answered;
then: the proxy answers a normal request, its descriptors come back to the baseline once the
upstream drops its idle connections (both builds), and (release build) its RSS comes back under
baseline + RSS_SLACK_KB. Last, the four transcripts (the outcome of every exchange that does not
depend on timing) must be identical.

Tolerated, because a client cannot see it or SPEC does not say:
  - a close-delimited response whose upstream aborts (mode=close, or chunked to an HTTP/1.0
    client, which the proxy de-chunks): a cut looks like the end, so only the prefix and its
    bound (no more than the upstream sent) are checked;
  - an empty request body (Content-Length: 0 or a lone last chunk) may reach the upstream
    framed either way or not at all;
  - where a cut response or a client's own reset stopped, and whether a planned client reset
    came before the proxy ended the connection (timing): not in the transcripts.
Kept out of reach on purpose: a client whose SO_RCVBUF is below SMALL_RCVBUF announces a
1460-byte MSS. With loopback's 64 KiB segments Linux sometimes settles into a receive window
below the sender's MSS (half the largest window seen) and then sends one segment per persist
timer tick, about 100 KB/s (seen as 10 s stalls with the bytes in the proxy's send queue,
rwnd_limited 99.9 %, the client's queue empty); that is the kernel, not the proxy. A connection
that times out reports its sockets (/proc/net/tcp and ss) so such a case can be told apart.
A response cut because the proxy reset the connection after a later pipelined exchange's
upstream aborted is reported as such ("lost to the proxy's reset ..."): the reset drops bytes
of earlier complete responses still in the send queue (a close that does not linger, RFC 9112
section 9.6).

Environment: AUTHPROXY_DIFF_SEED (default SEED), AUTHPROXY_DIFF_SCALE (connections x scale,
default 1), AUTHPROXY_DIFF_ONLY="3,17" (run only those connections of the workload, to replay
one), AUTHPROXY_DIFF_CONFIGS="plain,tls,plain-noring,tls-noring" (a subset). Every failure message
names the seed, the proxy and the connection, with the scenario and how to replay it.
"""
import concurrent.futures as cf
import hashlib
import http.client
import json
import os
import random
import select
import socket
import ssl
import struct
import subprocess
import sys
import time

import harness
from harness import ASAN, MiB, Proxy, certs, free_port, make_config, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import diff_upstream  # noqa: E402
from diff_upstream import body_bytes  # noqa: E402

SEED = 20261203
KiB = 1 << 10
HOST = "diff.test"
BODY_CAP = (1 * MiB) if ASAN else (8 * MiB)
CONNS = 30 if ASAN else 48         # connections per workload at scale 1
CONN_SECONDS = 1.6                 # what throttling, pacing and delays may cost one connection
WORKERS = 8                        # connections in flight at once (over all four proxies)
UPSTREAM_TIMEOUT_MS = 6000 if ASAN else 4000  # > any delay or stall the upstream makes
RSS_SLACK_KB = 32 * 1024
SMALL_RCVBUF = 256 * KiB           # below it the client announces a 1460-byte MSS (run_conn)
TEST_BUDGET_S = 52                 # the runner kills the test at 60 s


def env_int(name, default):
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


def env_float(name, default):
    v = os.environ.get(name, "").strip()
    return float(v) if v else default


# ---------------------------------------------------------------------------------------------
# the workload

def log_uniform(rnd, lo, hi):
    import math
    return int(math.exp(rnd.uniform(math.log(lo), math.log(hi))))


EDGE_SIZES = (0, 1, 2, 15, 16, 1023, 1024, 4095, 4096, 4097, 16383, 16384, 16385, 32767, 32768,
              32769, 65535, 65536, 65537, 131072, 1 << 20, (1 << 20) + 1, 4 << 20, 8 << 20)


def pick_size(rnd, cap):
    r = rnd.random()
    if r < 0.12:
        n = rnd.choice(EDGE_SIZES)
    elif r < 0.40:
        n = rnd.randint(0, 4096)
    elif r < 0.70:
        n = log_uniform(rnd, 4096, 256 * KiB)
    elif r < 0.90:
        n = log_uniform(rnd, 256 * KiB, 2 * MiB)
    else:
        n = log_uniform(rnd, 2 * MiB, 8 * MiB)
    return max(0, min(n, cap, BODY_CAP))


def pick_chunk_plan(rnd, n):
    """Request chunk sizes (client side)."""
    if n == 0:
        return []
    style = rnd.random()
    if style < 0.3:
        k = max(rnd.choice((1, 10, 1000, 4096, 16384, 65536, 1 << 20)), n // 1500 + 1)
        full, rest = divmod(n, k)
        return [k] * full + ([rest] if rest else [])
    out, left = [], n
    while left > 0:
        c = min(left, max(1, log_uniform(rnd, 1, 300 * KiB)), max(left // 2, n // 500 + 1, 1))
        out.append(c)
        left -= c
    return out


def gen_exchange(rnd, ci, ei, last, version, conn_budget_bytes):
    """One request and the response it asks for. conn_budget_bytes bounds the response for a
    throttled reader (None: unthrottled)."""
    x = {"id": "%d.%d" % (ci, ei)}
    r = rnd.random()
    if version == "1.0":
        x["method"] = rnd.choice(("GET", "POST", "PUT"))
    else:
        x["method"] = ("GET" if r < 0.42 else "POST" if r < 0.72 else "PUT" if r < 0.87
                       else "HEAD" if r < 0.93 else "DELETE")
    if x["method"] in ("POST", "PUT"):
        x["req_n"] = pick_size(rnd, BODY_CAP)
        x["req_mode"] = "cl" if (version == "1.0" or rnd.random() < 0.55) else "chunked"
        x["req_seed"] = rnd.getrandbits(31)
        if x["req_mode"] == "chunked":
            x["req_chunks"] = pick_chunk_plan(rnd, x["req_n"])
            x["req_ext"] = rnd.random() < 0.15
            x["req_trailer"] = rnd.random() < 0.12
        if rnd.random() < 0.08 and x["req_n"] > 0:
            x["rpace"] = log_uniform(rnd, 2 * MiB, 32 * MiB)
            x["req_n"] = min(x["req_n"], int(x["rpace"] * 0.6))
            if x["req_mode"] == "chunked":
                x["req_chunks"] = pick_chunk_plan(rnd, x["req_n"])
    else:
        x["req_n"], x["req_mode"] = 0, "none"
    q = {"id": x["id"], "seed": rnd.getrandbits(31)}
    status = 200
    r = rnd.random()
    if r < 0.04:
        status = 204
    elif r < 0.06 and x["method"] in ("GET", "HEAD"):
        status = 304
    elif r < 0.12:
        status = rnd.choice((201, 404, 500))
    bodyless = x["method"] == "HEAD" or status in (204, 304)
    r = rnd.random()
    mode = "cl" if r < 0.45 else "chunked" if r < 0.85 else "close"
    if mode == "close" and (not last or bodyless):
        mode = "cl"
    cap = BODY_CAP if conn_budget_bytes is None else max(0, conn_budget_bytes)
    n = pick_size(rnd, cap)
    if rnd.random() < 0.15 and mode == "chunked":
        n = max(n, min(cap, log_uniform(rnd, 1 * MiB, 8 * MiB)))  # the large chunked case
    q.update({"n": n, "mode": mode})
    if status != 200:
        q["status"] = status
    if mode == "chunked":
        c = rnd.choice((0, 0, 0, 1, 100, 4096, 16384, 65536, 65536, 300000, 1 << 20))
        q["chunk"] = max(c, n // 2000) if c else 0
        if rnd.random() < 0.1:
            q["ext"] = 1
        if rnd.random() < 0.2:
            q["trailer"] = 1
    q["wsz"] = rnd.choice((1024, 16384, 65536, 65536, 262144, 1 << 20, 1 << 20))
    if rnd.random() < 0.3:
        q["split"] = 1
    if rnd.random() < 0.2:
        q["sndbuf"] = rnd.choice((16384, 65536, 262144, 4 << 20))
    if rnd.random() < 0.15:
        q["delay_ms"] = rnd.randint(1, 500)
    if rnd.random() < 0.1 and n > 0 and not bodyless:
        q["pace"] = log_uniform(rnd, 1 * MiB, 32 * MiB)
        q["n"] = n = min(n, int(q["pace"] * 0.5))
        if mode == "chunked" and q["chunk"]:
            q["chunk"] = max(q["chunk"], n // 2000)
    if rnd.random() < 0.1 and n > 0 and not bodyless:
        q["stall_at"] = rnd.randint(0, n)
        q["stall_ms"] = rnd.randint(50, 700)
    x["faulted"] = False
    if rnd.random() < 0.1 and not bodyless and (n > 0 or mode == "chunked"):
        # the upstream gives up after abort_at body bytes (the head always went out)
        hi = n if mode == "chunked" else n - 1
        q["abort_at"] = rnd.randint(0, hi) if rnd.random() < 0.7 else hi
        q["abort"] = "rst" if (mode == "close" or rnd.random() < 0.6) else "fin"
        x["faulted"] = True
    x["q"] = q
    x["status"] = status
    x["bodyless"] = bodyless
    x["close_req"] = last and version == "1.1" and rnd.random() < 0.1
    return x


def gen_conn(rnd, ci):
    c = {"ci": ci}
    c["version"] = "1.0" if rnd.random() < 0.07 else "1.1"
    c["depth"] = 1 if (c["version"] == "1.0" or rnd.random() < 0.45) else rnd.randint(2, 8)
    c["rcvbuf"] = log_uniform(rnd, 4 * KiB, 1 * MiB) if rnd.random() < 0.7 else None
    c["rate"] = None if rnd.random() < 0.4 else log_uniform(rnd, 256 * KiB, 32 * MiB)
    c["read_size"] = rnd.choice((4096, 16384, 65536, 65536, 262144))
    budget = None if c["rate"] is None else int(c["rate"] * CONN_SECONDS)
    xs = []
    for ei in range(c["depth"]):
        x = gen_exchange(rnd, ci, ei, ei == c["depth"] - 1, c["version"], budget)
        if budget is not None and not x["bodyless"]:
            budget -= x["q"]["n"]
        xs.append(x)
    c["xs"] = xs
    c["half_close"] = rnd.random() < 0.25
    c["reset"] = None
    if rnd.random() < 0.12:
        c["reset"] = {"kind": rnd.choice(("rst", "close")), "side": rnd.choice(("send", "recv")),
                      "frac": rnd.random()}
        c["half_close"] = False
    return c


def gen_workload(seed, scale):
    rnd = random.Random(seed)
    n = max(1, int(round(CONNS * scale)))
    conns = [gen_conn(rnd, ci) for ci in range(n)]
    # the class of a known bug, always present: large chunked responses, fast upstream,
    # throttled reader with a small receive buffer
    for k in range(max(1, n // 12)):
        c = conns[rnd.randrange(n)]
        if c["reset"] or c["version"] == "1.0":
            continue
        c["rate"] = log_uniform(rnd, 1 * MiB, 12 * MiB)
        c["rcvbuf"] = rnd.choice((16 * KiB, 64 * KiB, 128 * KiB))
        c["read_size"] = rnd.choice((4096, 16384, 65536))
        budget = int(c["rate"] * CONN_SECONDS)
        for x in c["xs"]:
            q = x["q"]
            for key in ("pace", "delay_ms", "stall_at", "stall_ms", "abort_at", "abort"):
                q.pop(key, None)
            x["faulted"] = False
            if not x["bodyless"]:
                q["n"] = max(0, min(BODY_CAP, budget // len(c["xs"])))
                if q["mode"] != "close":
                    q["mode"] = "chunked"
                    q["chunk"] = rnd.choice((0, 65536, 300000))
    for c in conns:
        for x in c["xs"]:
            if x["req_mode"] != "none":
                x["req_sha256"] = req_sha(x["req_seed"], x["req_n"])
            x["head"] = request_head(c, x)
            x["req_bytes"] = len(x["head"]) + request_body_len(x)
    return conns


_sha_cache = {}


def req_sha(seed, n):
    key = (seed, n)
    if key not in _sha_cache:
        _sha_cache[key] = diff_upstream.body_sha256(seed, n)
    return _sha_cache[key]


def request_head(c, x):
    q = "&".join("%s=%s" % (k, v) for k, v in x["q"].items())
    lines = ["%s http://%s/d?%s HTTP/%s" % (x["method"], HOST, q, c["version"]),
             "Host: " + HOST, "X-Diff-Id: " + x["id"], "User-Agent: authproxy-diff"]
    if x["req_mode"] == "cl":
        lines.append("Content-Length: %d" % x["req_n"])
    elif x["req_mode"] == "chunked":
        lines.append("Transfer-Encoding: chunked")
    if x["close_req"]:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk_line(x, size):
    if x.get("req_ext"):
        return b"%x;diff=\"ext\";v\r\n" % size
    return b"%x\r\n" % size


def chunk_tail(x):
    return b"0\r\nX-Client-Trailer: 1\r\n\r\n" if x.get("req_trailer") else b"0\r\n\r\n"


def request_body_len(x):
    if x["req_mode"] == "cl":
        return x["req_n"]
    if x["req_mode"] == "chunked":
        return (sum(len(chunk_line(x, s)) + s + 2 for s in x["req_chunks"]) +
                len(chunk_tail(x)))
    return 0


def request_pieces(x):
    """The bytes of one request, generated in pieces of at most 256 KiB."""
    yield x["head"]
    seed, n = x.get("req_seed"), x["req_n"]
    if x["req_mode"] == "cl":
        off = 0
        while off < n:
            take = min(n - off, 256 * KiB)
            yield body_bytes(seed, off, take)
            off += take
    elif x["req_mode"] == "chunked":
        off = 0
        for s in x["req_chunks"]:
            if s <= 16 * KiB:
                yield chunk_line(x, s) + body_bytes(seed, off, s) + b"\r\n"
            else:
                yield chunk_line(x, s)
                o = 0
                while o < s:
                    take = min(s - o, 256 * KiB)
                    yield body_bytes(seed, off + o, take)
                    o += take
                yield b"\r\n"
            off += s
        yield chunk_tail(x)


def describe(c, only_x=None):
    """A scenario in one line, for failure messages (only_x: just that exchange)."""
    parts = ["conn %d: HTTP/%s depth %d rcvbuf %s rate %s read %d%s%s" % (
        c["ci"], c["version"], c["depth"], c["rcvbuf"], c["rate"], c["read_size"],
        " half-close" if c["half_close"] else "",
        (" reset %s on %s at %.2f" % (c["reset"]["kind"], c["reset"]["side"], c["reset"]["frac"]))
        if c["reset"] else "")]
    for x in c["xs"]:
        if only_x and x["id"] != only_x:
            continue
        req = x["method"] if x["req_mode"] == "none" else "%s %s %d%s%s" % (
            x["method"], x["req_mode"], x["req_n"], " ext" if x.get("req_ext") else "",
            " trailer" if x.get("req_trailer") else "")
        if x.get("rpace"):
            req += " rpace %d" % x["rpace"]
        q = ",".join("%s=%s" % (k, v) for k, v in x["q"].items() if k != "id")
        parts.append("[%s: %s -> %s%s]" % (x["id"], req, q, " close" if x["close_req"] else ""))
    return " ".join(parts)


def expect_seconds(c):
    """A generous bound on how long one connection may take, from its sizes and rates."""
    t = 0.0
    for x in c["xs"]:
        q = x["q"]
        t += q.get("delay_ms", 0) / 1000.0 + q.get("stall_ms", 0) / 1000.0
        if q.get("pace"):
            t += q["n"] / q["pace"]
        if x.get("rpace"):
            t += x["req_n"] / x["rpace"]
        if c["rate"] and not x["bodyless"]:
            t += q["n"] / c["rate"]
        t += (q["n"] + x["req_n"]) / ((30 if ASAN else 120) * MiB)
    return t


# ---------------------------------------------------------------------------------------------
# the client: one connection, one thread, non-blocking socket and select

class Resp:
    def __init__(self, x):
        self.x = x
        self.status = None
        self.version = None
        self.headers = []
        self.framing = None      # "length", "chunked", "close", "none"
        self.cl = None
        self.body_len = 0
        self.sha = hashlib.sha256()
        self.mismatch = None     # first body offset that differs from the generator
        self.complete = False
        self.trailers = []
        self.chunks = 0
        self.errors = []

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name]

    def summary(self):
        return "%s %s %s body %d%s%s%s" % (
            self.status, self.framing, "complete" if self.complete else "INCOMPLETE",
            self.body_len, " (CL %s)" % self.cl if self.cl is not None else "",
            " mismatch at %d" % self.mismatch if self.mismatch is not None else "",
            (" errors %s" % self.errors) if self.errors else "")


class Parser:
    """Response framing, pushed byte ranges; one Resp per response, checked against the
    generator as the bytes arrive."""

    def __init__(self, xs):
        self.xs = xs
        self.buf = bytearray()
        self.resps = []
        self.cur = None
        self.state = "head"
        self.left = 0
        self.errors = []   # framing errors outside a response (extra bytes ...)
        self.done_all = False

    def _body(self, mv):
        r = self.cur
        n = len(mv)
        if n == 0:
            return
        r.sha.update(mv)
        seed, exp_n = r.x["q"]["seed"], r.x["q"]["n"]
        off = r.body_len
        if r.mismatch is None:
            m = min(n, max(0, exp_n - off))
            if m:
                got = bytes(mv[:m])
                exp = body_bytes(seed, off, m)
                if got != exp:
                    r.mismatch = off + next(i for i in range(m) if got[i] != exp[i])
            if r.mismatch is None and n > m:
                r.mismatch = off + m  # longer than the upstream's body
        r.body_len += n

    def _end(self, complete):
        r = self.cur
        r.complete = complete
        self.resps.append(r)
        self.cur = None
        self.state = "head"
        if len(self.resps) >= len(self.xs):
            self.done_all = True

    def feed(self, data):
        self.buf += data
        pos = 0
        buf = self.buf
        while pos < len(buf):
            st = self.state
            if st == "head":
                if self.done_all:
                    self.errors.append("%d bytes after the last response: %r" % (
                        len(buf) - pos, bytes(buf[pos:pos + 80])))
                    pos = len(buf)
                    break
                i = buf.find(b"\r\n\r\n", pos)
                if i < 0:
                    if len(buf) - pos > 256 * KiB:
                        self.errors.append("no end of a response head in 256 KiB")
                        pos = len(buf)
                    break
                head = bytes(buf[pos:i])
                pos = i + 4
                self._head(head)
            elif st == "length":
                take = min(self.left, len(buf) - pos)
                with memoryview(buf) as mv:
                    self._body(mv[pos:pos + take])
                pos += take
                self.left -= take
                if self.left == 0:
                    self._end(True)
            elif st == "close":
                with memoryview(buf) as mv:
                    self._body(mv[pos:])
                pos = len(buf)
            elif st == "size":
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    if len(buf) - pos > 8192:
                        self.cur.errors.append("chunk-size line over 8 KiB")
                        self.state = "broken"
                    break
                line = bytes(buf[pos:i])
                pos = i + 2
                size_s = line.split(b";", 1)[0]
                try:
                    if not size_s or size_s.strip(b"0123456789abcdefABCDEF"):
                        raise ValueError
                    size = int(size_s, 16)
                except ValueError:
                    self.cur.errors.append("bad chunk-size line %r" % line[:80])
                    self.state = "broken"
                    continue
                self.cur.chunks += 1
                if size == 0:
                    self.state = "trailers"
                else:
                    self.left = size
                    self.state = "data"
            elif st == "data":
                take = min(self.left, len(buf) - pos)
                with memoryview(buf) as mv:
                    self._body(mv[pos:pos + take])
                pos += take
                self.left -= take
                if self.left == 0:
                    self.state = "crlf"
            elif st == "crlf":
                if len(buf) - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    self.cur.errors.append("chunk data not followed by CRLF: %r"
                                           % bytes(buf[pos:pos + 10]))
                    self.state = "broken"
                    continue
                pos += 2
                self.state = "size"
            elif st == "trailers":
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    break
                line = bytes(buf[pos:i])
                pos = i + 2
                if line == b"":
                    self._end(True)
                else:
                    self.cur.trailers.append(line.decode("latin-1"))
            elif st == "broken":
                pos = len(buf)
        del buf[:pos]

    def _head(self, head):
        if self.cur is None:
            self.cur = Resp(self.xs[len(self.resps)])
        r = self.cur
        lines = head.split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ", 2)
        try:
            r.version, r.status = parts[0], int(parts[1])
        except (IndexError, ValueError):
            r.errors.append("bad status line %r" % lines[0][:100])
            self.state = "broken"
            self.resps.append(r)
            return
        for ln in lines[1:]:
            k, sep, v = ln.decode("latin-1").partition(":")
            if not sep or not k or k != k.strip():
                r.errors.append("bad header line %r" % ln[:100])
            r.headers.append((k, v.strip(" \t")))
        if 100 <= r.status < 200:
            r.errors.append("unexpected interim response %d" % r.status)
            r.headers = []
            return
        te = ",".join(r.header_all("transfer-encoding")).lower()
        cls = r.header_all("content-length")
        if len(cls) > 1:
            r.errors.append("several Content-Length: %r" % cls)
        if cls:
            try:
                r.cl = int(cls[0])
            except ValueError:
                r.errors.append("bad Content-Length %r" % cls[0])
        if te and cls:
            r.errors.append("both Transfer-Encoding and Content-Length")
        if r.x["method"] == "HEAD" or r.status in (204, 304):
            r.framing = "none"
            self._end(True)
        elif te:
            if te.split(",")[-1].strip() != "chunked":
                r.errors.append("Transfer-Encoding %r" % te)
            r.framing = "chunked"
            self.state = "size"
        elif r.cl is not None:
            r.framing = "length"
            self.left = r.cl
            self.state = "length"
            if r.cl == 0:
                self._end(True)
        else:
            r.framing = "close"
            self.state = "close"

    def eof(self):
        """The connection ended: a close-delimited body is complete, anything else cut."""
        if self.cur is not None:
            if self.state == "close":
                self._end(True)
            else:
                r = self.cur
                r.complete = False
                self.resps.append(r)
                self.cur = None
        elif self.buf:
            self.errors.append("connection closed inside a response head: %r"
                               % bytes(self.buf[:80]))


class Outcome:
    def __init__(self):
        self.resps = []
        self.errors = []
        self.eof = False
        self.peer_reset = False
        self.timed_out = False
        self.did_reset = False
        self.sent = 0
        self.recv = 0
        self.send_error = None
        self.seconds = 0.0
        self.diag = []


def run_conn(port, c, deadline, up_port=None):
    """Drives one connection of the workload; returns its Outcome."""
    out = Outcome()
    t0 = time.monotonic()
    xs = c["xs"]
    reset = c["reset"]
    reset_at = None
    if reset:
        total = (sum(x["req_bytes"] for x in xs) if reset["side"] == "send"
                 else sum(x["q"]["n"] for x in xs if not x["bodyless"]) + 300 * len(xs))
        reset_at = int(total * reset["frac"])
    # the responses this connection must see: up to the first one that ends it
    must = len(xs)
    for i, x in enumerate(xs):
        if ends_conn(c, x):
            must = i + 1
            break
    keep_open = not ends_conn(c, xs[must - 1])
    parser = Parser(xs[:must])
    close_wait = 6.0 if ASAN else 3.0
    t_all = None  # when the last response due had arrived
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if c["rcvbuf"]:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, c["rcvbuf"])
            if c["rcvbuf"] < SMALL_RCVBUF:
                # loopback's 64 KiB segments and a window that never reaches the sender's MSS
                # (half the largest window seen) leave Linux sending one segment per persist
                # timer tick (~100 KB/s, seen as 10 s stalls with the bytes in the proxy's send
                # queue): segments of an Ethernet's size keep the window above the MSS
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(max(0.5, min(5.0, deadline - time.monotonic())))
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        pieces = (p for x in xs for p in request_pieces(x))
        pending = memoryview(b"")
        sending = True
        rate, read_size = c["rate"], c["read_size"]
        tokens, t_tok = float(read_size), time.monotonic()
        burst = max(read_size, (rate or 0) * 0.05)
        while True:
            now = time.monotonic()
            if now > deadline:
                out.timed_out = True
                ports = {s.getsockname()[1]} | ({up_port} if up_port else set())
                out.diag = tcp_sockets(ports) + tcp_details(s.getsockname()[1])
                break
            if sending and not pending:
                nxt = next(pieces, None)
                if nxt is None:
                    sending = False
                    if c["half_close"]:
                        try:
                            s.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                else:
                    pending = memoryview(nxt)
                    continue
            if keep_open and not sending and len(parser.resps) >= must:
                break  # every answer is in (it may have come with the read before)
            want = read_size
            wait_read = 0.0
            if rate:
                tokens = min(burst, tokens + (now - t_tok) * rate)
                t_tok = now
                need = min(read_size, burst)
                if tokens < need:
                    wait_read = (need - tokens) / rate
                want = int(min(read_size, tokens))
            rl = [s] if (not out.eof and wait_read == 0.0) else []
            wl = [s] if sending and pending else []
            if not rl and not wl:
                if out.eof:
                    break
                time.sleep(min(wait_read, max(0.0, deadline - now)) + 0.0005)
                continue
            tmo = min(deadline - now, 0.25) if wait_read == 0.0 else min(wait_read, 0.25)
            r, w, _ = select.select(rl, wl, [], max(0.0, tmo))
            if w:
                try:
                    k = s.send(pending[:256 * KiB])
                    out.sent += k
                    pending = pending[k:]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    # a reset reported here is not reported again by recv (which sees EOF)
                    out.peer_reset = out.peer_reset or isinstance(e, ConnectionResetError)
                    out.send_error = "%s" % e
                    sending = False
                    pending = memoryview(b"")
                if reset and reset["side"] == "send" and out.sent >= reset_at:
                    do_reset(s, reset["kind"])
                    out.did_reset = True
                    break
            if r:
                try:
                    d = s.recv(max(1, want))
                except (BlockingIOError, InterruptedError):
                    d = None
                except ConnectionResetError:
                    out.peer_reset = True
                    out.eof = True
                    d = None
                if d is not None:
                    if not d:
                        out.eof = True
                    else:
                        out.recv += len(d)
                        if rate:
                            tokens -= len(d)
                        parser.feed(d)
                if out.eof:
                    parser.eof()
                    break
                if reset and reset["side"] == "recv" and out.recv >= reset_at:
                    do_reset(s, reset["kind"])
                    out.did_reset = True
                    break
            if parser.done_all and not keep_open:
                # the proxy must close; a pipelined request after the end may still be sent
                if t_all is None:
                    t_all = time.monotonic()
                elif time.monotonic() - t_all > close_wait:
                    break
    except OSError as e:
        out.errors.append("socket error: %s" % e)
    finally:
        try:
            s.close()
        except OSError:
            pass
    out.resps = list(parser.resps)
    if parser.cur is not None and parser.cur.status is not None:
        out.resps.append(parser.cur)  # the one in progress (cut by our reset or the deadline)
        parser.cur.complete = False
    out.errors += parser.errors
    out.seconds = time.monotonic() - t0
    return out


def tcp_sockets(ports):
    """The TCP sockets with a local or remote port in ports, from /proc/net/tcp: "local ->
    remote state send-queue/receive-queue" (to tell which side holds the bytes of a stall)."""
    states = {"01": "ESTAB", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT",
              "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
              "0B": "CLOSING"}
    out = []
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                p = line.split()
                lp, rp = int(p[1].split(":")[1], 16), int(p[2].split(":")[1], 16)
                if lp in ports or rp in ports:
                    tx, rx = (int(v, 16) for v in p[4].split(":"))
                    out.append("%d->%d %s sendq %d recvq %d" % (lp, rp, states.get(p[3], p[3]),
                                                                tx, rx))
    except (OSError, IndexError, ValueError):
        pass
    return out


def tcp_details(port):
    """ss -tnoi for both ends of the client's connection (timers, windows, retransmissions),
    when ss is installed."""
    try:
        r = subprocess.run(["ss", "-tnoiH", "( sport = :%d or dport = :%d )" % (port, port)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=3)
        return [" ".join(r.stdout.decode("utf-8", "replace").split())[:1500]]
    except (OSError, subprocess.SubprocessError):
        return []


def do_reset(s, kind):
    if kind == "rst":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def ends_conn(c, x):
    """Does this exchange's response end the client connection (by the model)?"""
    return (x["faulted"] or x["close_req"] or c["version"] == "1.0" or
            (x["q"]["mode"] == "close" and not x["bodyless"]))


# ---------------------------------------------------------------------------------------------
# checking one connection against the model

def check_resp(c, x, r, failures, cut_ok):
    """A response as received. cut_ok: our own reset or a fault may have cut it."""
    q = x["q"]
    bad = []
    if r.errors:
        bad.append("framing errors %s" % r.errors)
    if r.version != "HTTP/1.1":
        bad.append("version %r" % r.version)
    if r.status != x["status"]:
        bad.append("status %s, expected %d" % (r.status, x["status"]))
    hv = lambda n: r.header(n)  # noqa: E731
    if hv("x-diff-id") != x["id"]:
        bad.append("X-Diff-Id %r (answer of another request?)" % hv("x-diff-id"))
    if "authproxy-test" not in (hv("via") or ""):
        bad.append("no Via: %r" % hv("via"))
    # what the upstream saw of the request
    if hv("x-req-method") != x["method"]:
        bad.append("upstream saw method %r" % hv("x-req-method"))
    exp_len = x["req_n"]
    if hv("x-req-len") != str(exp_len) or (exp_len and hv("x-req-sha256") != x["req_sha256"]):
        bad.append("upstream saw a request body of %s bytes sha %s, the client sent %d sha %s" % (
            hv("x-req-len"), (hv("x-req-sha256") or "")[:16], exp_len,
            x.get("req_sha256", "")[:16]))
    fr = hv("x-req-framing")
    exp_fr = {"cl": "cl", "chunked": "chunked", "none": "none"}[x["req_mode"]]
    if fr != exp_fr and not (exp_len == 0 and fr in ("cl", "chunked", "none")):
        bad.append("upstream saw request framing %r, the client sent %r" % (fr, exp_fr))
    if hv("x-req-ext") not in ("0", None) or hv("x-req-trailers") not in ("0", None):
        bad.append("upstream saw %s chunk extensions and %s trailer fields (SPEC: removed)" % (
            hv("x-req-ext"), hv("x-req-trailers")))
    if "authproxy-test" not in (hv("x-req-via") or ""):
        bad.append("upstream saw no Via: %r" % hv("x-req-via"))
    # framing
    conn_close = "close" in (hv("connection") or "").lower()
    n = q["n"]
    if x["bodyless"]:
        if r.framing != "none":
            bad.append("framing %s for a bodyless response" % r.framing)
        if q["mode"] == "cl" and x["status"] not in (204, 304) and r.cl != n:
            bad.append("HEAD: Content-Length %s, the upstream sent %d" % (r.cl, n))
    else:
        if q["mode"] == "cl":
            exp_framing = "length"
        elif q["mode"] == "chunked":
            exp_framing = "chunked" if c["version"] == "1.1" else "close"
        else:
            exp_framing = "close"
        if r.framing != exp_framing:
            bad.append("framing %s, expected %s" % (r.framing, exp_framing))
        if exp_framing == "length" and r.cl != n:
            bad.append("Content-Length %s, the upstream sent %d" % (r.cl, n))
        if r.mismatch is not None:
            bad.append("body differs from the upstream's at byte %d" % r.mismatch)
        if r.body_len > n:
            bad.append("body of %d bytes, longer than the upstream's %d" % (r.body_len, n))
    if x["faulted"]:
        a = q["abort_at"]
        if r.body_len > a:
            bad.append("%d body bytes after the upstream aborted at %d" % (r.body_len, a))
        visible = r.framing in ("length", "chunked")
        if r.complete and visible:
            bad.append("the upstream aborted at byte %d, yet the client got a complete-looking "
                       "response (SPEC: the cut must be visible)" % a)
    elif not cut_ok:
        if not r.complete:
            bad.append("response cut")
        elif not x["bodyless"] and r.body_len != n:
            bad.append("body of %d bytes, expected %d" % (r.body_len, n))
        if (x["q"].get("trailer") and q["mode"] == "chunked" and c["version"] == "1.1"
                and not x["bodyless"] and ("X-Diff-Trailer: %s" % x["id"]) not in r.trailers):
            bad.append("trailer lost: %r" % r.trailers)
        if ends_conn(c, x) and c["version"] == "1.1" and not conn_close:
            bad.append("no Connection: close on a response that ends the connection")
        if not ends_conn(c, x) and conn_close:
            bad.append("Connection: close on a keep-alive exchange")
    if bad:
        failures.append((x["id"], "response %s: %s" % (r.summary(), "; ".join(bad))))


def must_of(c):
    """How many responses the connection must see: up to the first that ends it."""
    for i, x in enumerate(c["xs"]):
        if ends_conn(c, x):
            return i + 1
    return len(c["xs"])


def check_conn(c, out):
    """Failures of one connection as [(exchange id or None, text)]."""
    failures = []
    xs = c["xs"]
    cut_by_us = out.did_reset
    must = must_of(c)
    for e in out.errors:
        if cut_by_us and e.startswith("socket error"):
            continue
        failures.append((None, "connection: %s" % e))
    if out.timed_out:
        cur = len(out.resps) - 1 if (out.resps and not out.resps[-1].complete) else \
            len(out.resps)
        failures.append((xs[min(cur, must - 1)]["id"],
                         "timed out after %.1f s with %d of %d responses (last: %s), sent %d of "
                         "%d bytes, received %d" % (
                             out.seconds, len(out.resps), must,
                             out.resps[-1].summary() if out.resps else "-", out.sent,
                             sum(x["req_bytes"] for x in xs), out.recv) +
                         ("; sockets then (client port first): %s" % ", ".join(out.diag)
                          if out.diag else "")))
    # a later exchange whose upstream aborted, on a connection the proxy then reset: the reset
    # can drop bytes of earlier responses still in flight (a close without lingering)
    fault = next((x for x in xs[:must] if x["faulted"]), None)
    why = (" — lost to the proxy's reset of the connection after %s's upstream aborted (the "
           "close did not linger: RFC 9112 9.6)" % fault["id"]) if (
               fault and out.peer_reset and not cut_by_us) else ""
    for i, r in enumerate(out.resps[:must]):
        last_got = i == len(out.resps) - 1
        n0 = len(failures)
        check_resp(c, xs[i], r, failures, cut_ok=(cut_by_us or out.timed_out) and last_got)
        if why and len(failures) > n0 and not xs[i]["faulted"]:
            failures[-1] = (failures[-1][0], failures[-1][1] + why)
    if not cut_by_us and not out.timed_out:
        if len(out.resps) < must:
            failures.append((xs[len(out.resps)]["id"], "no response (%d of %d arrived); eof %s, "
                             "reset by the proxy %s%s%s" % (
                                 len(out.resps), must, out.eof, out.peer_reset,
                                 "; sending failed: %s" % out.send_error if out.send_error
                                 else "", why)))
        elif not keep_open_of(c, xs, must) and not out.eof:
            failures.append((xs[must - 1]["id"], "connection not closed after this response"))
    if (not failures and not cut_by_us and out.peer_reset and
            not any(x["faulted"] for x in xs[:must])):
        failures.append((None, "connection reset by the proxy"))
    return failures


def keep_open_of(c, xs, must):
    return not ends_conn(c, xs[must - 1])


def transcript(c, out):
    """The deterministic outcome of a connection (what any correct proxy gives), one line per
    exchange."""
    lines = []
    xs = c["xs"]
    if c["reset"]:  # whether the reset came before the end depends on timing
        return ["%d: the client resets" % c["ci"]]
    for i, x in enumerate(xs):
        if i < len(out.resps):
            r = out.resps[i]
            if x["faulted"]:
                lines.append("%s: %s cut" % (x["id"], r.status))
            else:
                lines.append("%s: %s %s %s %d %s up=%s/%s/%s" % (
                    x["id"], r.status, r.framing, "complete" if r.complete else "cut",
                    r.body_len, r.sha.hexdigest()[:16], r.header("x-req-len"),
                    (r.header("x-req-sha256") or "")[:16], r.header("x-req-framing")))
        else:
            lines.append("%s: -" % x["id"])
    return lines


# ---------------------------------------------------------------------------------------------
# processes

class Upstream:
    def __init__(self, tls):
        args = [sys.executable, os.path.join(HERE, "diff_upstream.py"), "--port", "0"]
        if tls:
            cc = certs()
            args += ["--tls", cc["cert"], cc["key"]]
        self.tls = tls
        self.log_path = harness._next_name("diffup")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        try:
            line = harness.ready_line(self.proc)
            if not line.startswith(b"PORT "):
                raise AssertionError("diff upstream did not start: %r" % line)
            self.port = int(line.split()[1])
        except BaseException:
            self.stop()
            raise

    def get(self, path):
        if self.tls:
            ctx = ssl.create_default_context(cafile=certs()["ca"])
            h = http.client.HTTPSConnection("localhost", self.port, timeout=10, context=ctx)
        else:
            h = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            h.request("GET", path)
            r = h.getresponse()
            return r.status, r.read()
        finally:
            h.close()

    def route(self):
        if self.tls:
            return {"host": HOST, "upstream": "https://localhost:%d" % self.port}
        return {"host": HOST, "upstream": "http://127.0.0.1:%d" % self.port}

    def stop(self):
        harness.stop_process(self.proc, term_wait=3)
        try:
            self.proc.stdout.close()
        except Exception:
            pass
        self.log.close()


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def fd_list(pid):
    out = []
    try:
        for fd in sorted(os.listdir("/proc/%d/fd" % pid), key=int):
            try:
                out.append("%s->%s" % (fd, os.readlink("/proc/%d/fd/%s" % (pid, fd))))
            except OSError:
                pass
    except OSError:
        pass
    return out


def normal_request(px, tag):
    """A plain GET through the proxy: 200 with the generated body. Returns a failure or None."""
    q = "id=normal.%s&seed=7&n=10000&mode=cl" % tag
    try:
        st, hdrs, body = harness.request(px.port, "GET", "http://%s/d?%s" % (HOST, q),
                                         timeout=harness.T)
    except Exception as e:
        return "a normal request failed: %s: %s" % (type(e).__name__, e)
    if st != 200 or body != body_bytes(7, 0, 10000):
        return "a normal request got %d with %d bytes" % (st, len(body))
    return None


CONFIGS = (("plain", False, None), ("tls", True, None),
           ("plain-noring", False, "0"), ("tls-noring", True, "0"))


class Target:
    """One upstream and one proxy in front of it."""

    def __init__(self, name, tls, ring):
        self.name, self.tls, self.ring = name, tls, ring
        self.up = Upstream(tls)
        try:
            cfg = make_config(free_port(), [self.up.route()],
                              limits={"upstream_timeout_ms": UPSTREAM_TIMEOUT_MS,
                                      "idle_timeout_ms": 15000, "header_timeout_ms": 10000},
                              log={"level": "debug", "format": "text"})
            self.px = Proxy(cfg, env={"AUTHPROXY_IO_URING": ring} if ring is not None else None)
        except BaseException:
            self.up.stop()
            raise
        self.outcomes = {}
        self.failures = []  # (connection, exchange id, text)

    def io_path(self):
        return "plain calls" if "socket I/O: one recv()/send()" in self.px.output() else "io_uring"

    def drop_idle(self):
        try:
            self.up.get("/__drop_idle")
        except Exception:
            pass

    def stop(self):
        try:
            self.px.stop()
        finally:
            self.up.stop()


def test_differential():
    seed = env_int("AUTHPROXY_DIFF_SEED", SEED)
    scale = env_float("AUTHPROXY_DIFF_SCALE", 1.0)
    only = {int(v) for v in os.environ.get("AUTHPROXY_DIFF_ONLY", "").split(",") if v.strip()}
    names = [v.strip() for v in os.environ.get("AUTHPROXY_DIFF_CONFIGS", "").split(",")
             if v.strip()]
    t_start = time.monotonic()
    budget = TEST_BUDGET_S * max(1.0, scale)
    conns = gen_workload(seed, scale)
    if only:
        conns = [c for c in conns if c["ci"] in only]
    replay = "AUTHPROXY_DIFF_SEED=%d%s python3 tests/run.py -k test_differential %s" % (
        seed, "" if scale == 1.0 else " AUTHPROXY_DIFF_SCALE=%s" % scale,
        "--asan-only" if ASAN else "--release-only")
    targets = []
    try:
        for name, tls, ring in CONFIGS:
            if not names or name in names:
                targets.append(Target(name, tls, ring))
        # warm up (what a proxy opens once is open), then the baselines
        for t in targets:
            f = normal_request(t.px, t.name + ".warm")
            assert f is None, "seed %d, %s: before the workload: %s" % (seed, t.name, f)
        before = {t.name: fd_count(t.px.pid) for t in targets}
        for t in targets:
            t.drop_idle()
        for t in targets:  # the warm-up's pooled upstream connection goes away
            wait_until(lambda: fd_count(t.px.pid) < before[t.name], 3)
        for t in targets:
            t.fd_base = fd_count(t.px.pid)
            t.rss_base = t.px.status_field("VmRSS")

        # the workload through every proxy at once, the connections interleaved
        jobs = [(t, c) for c in conns for t in targets]
        random.Random(seed + 1).shuffle(jobs)
        t_work = time.monotonic()

        def job(t, c):
            deadline = min(t_start + budget, time.monotonic() + (20 if ASAN else 10) +
                           2 * expect_seconds(c))
            return run_conn(t.px.port, c, deadline, t.up.port)

        with cf.ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futs = {pool.submit(job, t, c): (t, c) for t, c in jobs}
            for fut in cf.as_completed(futs):
                t, c = futs[fut]
                t.outcomes[c["ci"]] = fut.result()
        work_s = time.monotonic() - t_work

        for t in targets:
            for c in conns:
                for xid, text in check_conn(c, t.outcomes[c["ci"]]):
                    t.failures.append((c["ci"], xid, text))
            check_upstream_log(t, conns)
            if not t.px.alive():
                t.failures.append((None, None, "the proxy died (exit %s)" % t.px.proc.poll()))
                continue
            f = normal_request(t.px, t.name + ".after")
            if f:
                t.failures.append((None, None, "after the workload: " + f))
        # descriptors and memory back to their baselines
        for t in targets:
            if t.px.alive():
                t.drop_idle()
        for t in targets:
            if not t.px.alive():
                continue
            ok = wait_until(lambda: fd_count(t.px.pid) <= t.fd_base, 8)
            t.fd_after = fd_count(t.px.pid)
            if not ok:
                t.failures.append((None, None, "descriptors: %d after the workload, %d before "
                                   "(%s)" % (t.fd_after, t.fd_base,
                                             " ".join(fd_list(t.px.pid))[-400:])))
            t.rss_after = t.px.status_field("VmRSS")
            if not ASAN:
                ok = wait_until(lambda: t.px.status_field("VmRSS") <= t.rss_base + RSS_SLACK_KB,
                                8, step=0.2)
                t.rss_after = t.px.status_field("VmRSS")
                if not ok:
                    t.failures.append((None, None, "RSS %d KiB after the workload, %d KiB before"
                                       % (t.rss_after, t.rss_base)))

        # the transcripts must agree
        diffs = []
        ref = targets[0]
        for t in targets[1:]:
            for c in conns:
                a = transcript(c, ref.outcomes[c["ci"]])
                b = transcript(c, t.outcomes[c["ci"]])
                if a != b:
                    diffs.append("conn %d: %s %s, %s %s" % (
                        c["ci"], ref.name, [ln for ln in a if ln not in b][:1], t.name,
                        [ln for ln in b if ln not in a][:1]))
        path = report(seed, scale, conns, targets, work_s, time.monotonic() - t_start, diffs)
        nfail = sum(len(t.failures) for t in targets)
        if nfail or diffs:
            by_ci = {c["ci"]: c for c in conns}
            lines = []
            for t in targets:
                if not t.failures:
                    continue
                ci, xid, text = t.failures[0]
                where = ("conn %d: %s: " % (ci, xid)) if xid else ("conn %d: " % ci) if ci is not \
                    None else ""
                scen = (" [" + describe(by_ci[ci], xid) + "]") if ci is not None else ""
                lines.append("%s (%s): %d failures, first: %s%s%s" % (
                    t.name, t.io_path(), len(t.failures), where, text[:300], scen[:400]))
                odd = [ln for ln in t.px.output().splitlines() if not any(
                    w in ln for w in (" listening on ", " ready: ", "socket I/O", "signal 15",
                                      " stopped"))]
                if odd:
                    lines.append("  %s log: %s" % (t.name, " / ".join(odd[-3:])[-300:]))
            lines += ["transcripts differ: " + d[:300] for d in diffs[:2]]
            raise AssertionError(
                "seed %d%s: %d failures, %d transcript differences; replay: %s (one connection: "
                "AUTHPROXY_DIFF_ONLY=N); all of them in %s\n%s" % (
                    seed, "" if scale == 1.0 else " scale %s" % scale, nfail, len(diffs), replay,
                    path, "\n".join(lines)))
    finally:
        for t in targets:
            t.stop()


def check_upstream_log(t, conns):
    """What the upstream read whole is what the client sent, once, and nothing after a response
    that ended its connection."""
    try:
        st, body = t.up.get("/__log")
        log = json.loads(body)
    except Exception as e:
        t.failures.append((None, None, "upstream log unreadable: %s" % e))
        return
    by_id = {}
    for rec in log:
        by_id.setdefault(rec["id"], []).append(rec)
    t.uplog = by_id
    xs = {x["id"]: (c, i, x) for c in conns for i, x in enumerate(c["xs"])}
    failed = {ci for ci, _, _ in t.failures}
    for rid, recs in sorted(by_id.items()):
        if rid.startswith("normal."):
            continue
        if rid not in xs:
            if not rid.startswith("normal."):
                t.failures.append((None, None, "upstream saw a request nobody sent: %r" % rid))
            continue
        c, i, x = xs[rid]
        if len(recs) > 1:
            t.failures.append((c["ci"], rid, "upstream saw it %d times" % len(recs)))
        rec = recs[0]
        exp = (x["method"], x["req_n"], x.get("req_sha256", hashlib.sha256().hexdigest()))
        got = (rec["method"], rec["req_len"], rec["req_sha256"])
        if got != exp:
            t.failures.append((c["ci"], rid, "upstream got %s %d bytes sha %s; the client sent %s "
                               "%d sha %s" % (got[0], got[1], got[2][:16], exp[0], exp[1],
                                              exp[2][:16])))
        if rec["req_ext"] or rec["req_trailers"]:
            if c["ci"] not in failed:  # the client side reported it already
                t.failures.append((c["ci"], rid, "upstream saw %d chunk extensions and %d trailer "
                                   "fields (SPEC: removed)" % (rec["req_ext"],
                                                               rec["req_trailers"])))
        for j in range(i):
            if ends_conn(c, c["xs"][j]):
                t.failures.append((c["ci"], rid, "upstream saw it, pipelined after %s which "
                                   "ended the connection" % c["xs"][j]["id"]))
                break
    for c in conns:
        out = t.outcomes.get(c["ci"])
        if out is None or out.did_reset or out.timed_out or c["ci"] in failed:
            continue
        for x in c["xs"][:must_of(c)]:
            if x["id"] not in by_id:
                t.failures.append((c["ci"], x["id"], "upstream never saw it"))


def features(conns):
    """What the workload covers, counted."""
    f = {}

    def add(k, cond=True):
        if cond:
            f[k] = f.get(k, 0) + 1
    for c in conns:
        add("throttled", c["rate"] is not None)
        add("rcvbuf", c["rcvbuf"] is not None)
        add("pipelined", c["depth"] > 1)
        add("half-close", c["half_close"])
        add("client-reset", c["reset"] is not None)
        add("http/1.0", c["version"] == "1.0")
        for x in c["xs"]:
            q = x["q"]
            add("req-" + x["req_mode"])
            add("req-ext", x.get("req_ext"))
            add("req-trailer", x.get("req_trailer"))
            add("upload-paced", x.get("rpace"))
            add("bodyless", x["bodyless"])
            if not x["bodyless"]:
                add("resp-" + q["mode"])
            add("resp-8MiB", q["n"] >= 8 * MiB and not x["bodyless"])
            add("paced", q.get("pace"))
            add("delayed", q.get("delay_ms"))
            add("stalled", q.get("stall_at") is not None)
            add("aborted", x["faulted"])
            add("client-close", x["close_req"])
    return " ".join("%s=%d" % kv for kv in sorted(f.items()))


def report(seed, scale, conns, targets, work_s, total_s, diffs):
    """Prints what ran and writes every failure to differential-<seed>.txt in the log
    directory; returns that path."""
    nx = sum(len(c["xs"]) for c in conns)
    down = sum(x["q"]["n"] for c in conns for x in c["xs"] if not x["bodyless"])
    upb = sum(x["req_n"] for c in conns for x in c["xs"])
    lines = ["differential seed %d scale %s: %d connections, %d exchanges, %.1f MiB down, "
             "%.1f MiB up per proxy; workload %.1f s, total %.1f s" % (
                 seed, scale, len(conns), nx, down / MiB, upb / MiB, work_s, total_s),
             "  covers: " + features(conns)]
    for t in targets:
        slow = sorted(((o.seconds - expect_seconds(c), c["ci"]) for c in conns
                       for o in [t.outcomes.get(c["ci"])] if o), reverse=True)[:3]
        lines.append("  %s (%s): %d failures; fds %s -> %s, RSS %s -> %s KiB; slowest beyond "
                     "their estimate: %s" % (
                         t.name, t.io_path(), len(t.failures), getattr(t, "fd_base", "?"),
                         getattr(t, "fd_after", "?"), getattr(t, "rss_base", "?"),
                         getattr(t, "rss_after", "?"),
                         ", ".join("conn %d +%.1fs" % (ci, d) for d, ci in slow)))
    by_ci = {c["ci"]: c for c in conns}
    detail = []
    for t in targets:
        for ci, xid, text in t.failures:
            detail.append("FAIL %s (%s): %s%s%s" % (
                t.name, t.io_path(), "conn %d: " % ci if ci is not None else "",
                "%s: " % xid if xid else "", text))
            if xid and xid in getattr(t, "uplog", {}):
                detail.append("     upstream saw: %s" % t.uplog[xid])
            if ci is not None:
                detail.append("     scenario: " + describe(by_ci[ci]))
    for d in diffs:
        detail.append("DIFF " + d)
    text = "\n".join(lines)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    path = os.path.join(harness.logdir(), "differential-%d.txt" % seed)
    try:
        with open(path, "a") as f:
            f.write(text + "\n" + "\n".join(detail) + "\n")
            for t in targets:
                if t.failures:
                    f.write("---- %s proxy log (last 40 lines)\n%s\n" % (
                        t.name, "\n".join(t.px.output().splitlines()[-40:])))
    except OSError:
        pass
    return path


if __name__ == "__main__":
    test_differential()
