"""Streaming: upstream failures mid-response, Expect: 100-continue, 1 GiB both ways in bounded
memory, backpressure."""
import hashlib
import http.client
import json
import os
import socket
import time

from harness import (ASAN, BLOCK_SIZE, RSS_LIMIT_KB, GiB, MiB, T, Conn, assert_error, curl,
                     get_json, heavy, heavy_size, logdir, pattern_block, pattern_bytes, proxied,
                     read_pattern, sha256)


def test_upstream_reset_mid_response_content_length():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/reset HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response(timeout=T)
            if r is None:
                raise AssertionError("no response head at all (the upstream had sent one)")
            assert r.status == 200, "the upstream's head had been sent; got %r" % r
            assert r.header("content-length") == "1000", "Content-Length changed: %r" % r.headers
            assert not r.complete and len(r.body) < 1000, \
                "a cut response was passed off as complete (%d bytes)" % len(r.body)
            assert r.body == b"r" * len(r.body), "body bytes differ"
            assert c.eof, "connection not closed after the cut"
        assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"


def test_upstream_reset_mid_response_chunked():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/reset?chunked=1 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response(timeout=T)
            assert r is not None and r.status == 200, "%r" % r
            assert not r.complete, "a cut chunked response ended with its last chunk: %r" % r
            assert r.body == b"r" * len(r.body) and len(r.body) <= 100
            assert c.eof, "connection not closed after the cut"
        assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"


def test_upstream_reset_http10_client():
    # for a client reading until close, the cut must still be visible: the proxy must not
    # have announced a read-until-close body for a Content-Length response
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/reset HTTP/1.0\r\nHost: plain.test\r\n\r\n")
            r = c.read_response(timeout=T)
            assert r is not None and r.status == 200, "%r" % r
            assert r.header("content-length") == "1000", \
                "HTTP/1.0 response lost its Content-Length: %r" % r.headers
            assert not r.complete and len(r.body) < 1000


def test_expect_100_continue_raw():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
                   "Content-Length: 11\r\nExpect: 100-continue\r\n\r\n")
            r = c.read_response(keep_interim=True, timeout=3)
            assert r is not None and r.status == 100, \
                "no 100 Continue before the body was sent: %r" % r
            c.send("hello world")
            r = c.read_response()
            assert r is not None and r.status == 200, "final response %r" % r
            e = r.json()
            assert e["body_length"] == 11 and e["body_sha256"] == sha256(b"hello world"), e
            # the connection goes on normally
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.json()["path"] == "/echo"


def test_expect_100_continue_curl_upload():
    with proxied() as (up, px):
        data = pattern_bytes(3 * MiB + 17)
        path = os.path.join(logdir(), "upload.bin")
        with open(path, "wb") as f:
            f.write(data)
        t0 = time.monotonic()
        r = curl(["-x", "http://127.0.0.1:%d" % px.port, "-H", "Expect: 100-continue",
                  "--expect100-timeout", "8", "--data-binary", "@" + path,
                  "-H", "Content-Type: application/octet-stream",
                  "http://plain.test/upload"], timeout=40)
        dt = time.monotonic() - t0
        os.unlink(path)
        assert r.returncode == 0, "curl failed: %s" % r.stderr.decode()
        e = json.loads(r.stdout)
        assert e["body_length"] == len(data), "upstream got %d bytes" % e["body_length"]
        assert e["body_sha256"] == sha256(data), "upstream body differs"
        assert dt < 6, "upload took %.1f s: curl waited for a 100 Continue that never came" % dt


def test_large_chunked_and_length_bodies_medium():
    with proxied() as (up, px):
        n = 32 * MiB if not ASAN else 8 * MiB
        with Conn(px.port) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            c.send("GET http://plain.test/chunked?n=%d&chunk=300000 HTTP/1.1\r\n"
                   "Host: plain.test\r\n\r\n" % n)
            r = c.read_response(timeout=60)
            assert r is not None and r.status == 200 and r.complete, "%r" % r
            assert len(r.body) == n and hashlib.sha256(r.body).hexdigest() == \
                hashlib.sha256(pattern_bytes(n)).hexdigest(), "chunked body differs"


@heavy
def test_download_1gib_bounded_memory():
    n = heavy_size(GiB)
    with proxied(limits={"upstream_timeout_ms": 30000, "idle_timeout_ms": 30000}) as (up, px):
        with Conn(px.port, timeout=60) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            c.send("GET http://plain.test/bytes?n=%d HTTP/1.1\r\nHost: plain.test\r\n\r\n" % n)
            deadline = time.monotonic() + 150
            head = c.read_until(b"\r\n\r\n", deadline)
            assert head and head.startswith(b"HTTP/1.1 200"), "head %r" % head
            assert b"content-length: %d\r\n" % n in head.lower(), "no Content-Length: %r" % head
            t0 = time.monotonic()
            got = read_pattern(c, n, deadline)
            dt = time.monotonic() - t0
            assert got == n, "received %d of %d bytes" % (got, n)
            # the connection is still usable
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200, "after the download: %r" % r
        if not ASAN:
            hwm = px.status_field("VmHWM")
            assert hwm < RSS_LIMIT_KB, "peak RSS %d KiB during a %d MiB download (%.0f MB/s)" % (
                hwm, n >> 20, n / dt / 1e6)


@heavy
def test_upload_1gib_bounded_memory():
    n = heavy_size(GiB)
    with proxied(limits={"upstream_timeout_ms": 30000, "idle_timeout_ms": 30000}) as (up, px):
        h = hashlib.sha256()

        def gen():
            left, k = n, 0
            while left > 0:
                take = min(left, BLOCK_SIZE)
                b = memoryview(pattern_block(k))[:take]
                h.update(b)
                yield b
                left -= take
                k += 1

        conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=150)
        try:
            conn.request("PUT", "http://plain.test/upload", body=gen(),
                         headers={"Content-Length": str(n),
                                  "Content-Type": "application/octet-stream"})
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        assert r.status == 200, "upload -> %d %r" % (r.status, data[:300])
        e = json.loads(data)
        assert e["body_length"] == n, "upstream got %d of %d bytes" % (e["body_length"], n)
        assert e["body_sha256"] == h.hexdigest(), "upstream body differs"
        if not ASAN:
            hwm = px.status_field("VmHWM")
            assert hwm < RSS_LIMIT_KB, "peak RSS %d KiB during a %d MiB upload" % (hwm, n >> 20)


@heavy
def test_chunked_upload_large_bounded_memory():
    n = heavy_size(256 * MiB)
    with proxied(limits={"upstream_timeout_ms": 30000, "idle_timeout_ms": 30000}) as (up, px):
        h = hashlib.sha256()

        def gen():
            left, k = n, 0
            while left > 0:
                take = min(left, BLOCK_SIZE)
                b = pattern_block(k)[:take]
                h.update(b)
                yield b
                left -= take
                k += 1

        conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=150)
        try:
            conn.request("POST", "http://plain.test/upload", body=gen(), encode_chunked=True,
                         headers={"Transfer-Encoding": "chunked"})
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        assert r.status == 200, "upload -> %d %r" % (r.status, data[:300])
        e = json.loads(data)
        assert e["body_length"] == n and e["body_sha256"] == h.hexdigest(), \
            "upstream got %d bytes, sha %s" % (e["body_length"], e["body_sha256"])
        if not ASAN:
            hwm = px.status_field("VmHWM")
            assert hwm < RSS_LIMIT_KB, "peak RSS %d KiB during a chunked upload" % hwm


@heavy
def test_slow_reader_backpressure():
    n = heavy_size(GiB)
    with proxied(limits={"upstream_timeout_ms": 30000, "idle_timeout_ms": 30000}) as (up, px):
        with Conn(px.port, timeout=30) as c:
            c.send("GET http://plain.test/bytes?n=%d HTTP/1.1\r\nHost: plain.test\r\n\r\n" % n)
            deadline = time.monotonic() + 30
            head = c.read_until(b"\r\n\r\n", deadline)
            assert head and head.startswith(b"HTTP/1.1 200"), "head %r" % head
            got = read_pattern(c, 4 * MiB, deadline)
            assert got == 4 * MiB
            time.sleep(2.0)  # the client stops reading; the upstream keeps pushing
            if not ASAN:
                rss = px.status_field("VmRSS")
                hwm = px.status_field("VmHWM")
                assert hwm < RSS_LIMIT_KB, \
                    "proxy buffered a stalled download: RSS %d KiB, peak %d KiB" % (rss, hwm)
        # the client went away mid-body; the proxy is fine
        time.sleep(0.3)
        assert px.alive(), "proxy died"
        assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"


def test_expect_100_continue_refused_request_gets_no_continue():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("POST http://nowhere.test/upload HTTP/1.1\r\nHost: nowhere.test\r\n"
                   "Content-Length: 11\r\nExpect: 100-continue\r\n\r\n")
            r = c.read_response(keep_interim=True, timeout=3)
            assert r is not None and r.status == 403, \
                "a request without route got %r before its final 403" % r
        assert up.stats()["requests"] == 0


def test_upstream_resets_during_upload():
    import threading
    with proxied() as (up, px):
        c = Conn(px.port, timeout=10)
        total = 20 * MiB
        sent = [0]

        def sender():
            try:
                c.send("POST http://plain.test/upload_reset HTTP/1.1\r\nHost: plain.test\r\n"
                       "Content-Length: %d\r\n\r\n" % total)
                chunk = b"u" * 65536
                while sent[0] < total:
                    c.sock.sendall(chunk)
                    sent[0] += len(chunk)
            except OSError:
                pass

        th = threading.Thread(target=sender, daemon=True)
        th.start()
        try:
            try:
                r = c.read_response(timeout=10)
            except OSError:
                r = None
            at_answer = sent[0]  # not after close: the sender may finish in between
            if r is not None:
                assert r.status != 200, "a reset upload was answered 200: %r" % r
                assert_error(r, 502, "upstream_unavailable")
        finally:
            c.close()
            th.join(10)
        assert at_answer < total, "the proxy swallowed the whole body after the upstream reset"
        time.sleep(0.2)
        assert px.alive(), "proxy died"
        assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"


def test_stalled_reader_is_not_cut_by_the_upstream_timeout():
    """While the client takes nothing, the proxy stops reading the upstream: the upstream's
    silence then is ours, not its own, and upstream_timeout_ms must not cut the response."""
    n = 16 * MiB
    with proxied(limits={"upstream_timeout_ms": 400, "idle_timeout_ms": 20000}) as (up, px):
        with Conn(px.port, timeout=20) as c:
            c.send("GET http://plain.test/bytes?n=%d HTTP/1.1\r\nHost: plain.test\r\n\r\n" % n)
            deadline = time.monotonic() + 20
            head = c.read_until(b"\r\n\r\n", deadline)
            assert head and head.startswith(b"HTTP/1.1 200"), "head %r" % head
            time.sleep(1.5)  # the client reads nothing for almost 4x upstream_timeout_ms
            got = read_pattern(c, n, deadline)
            assert got == n, "a stalled download was cut after %d of %d bytes" % (got, n)
        assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"


def test_client_that_never_reads_is_closed_after_idle_timeout():
    """A client that accepts no response bytes for idle_timeout_ms is closed (nginx's
    send_timeout): it would otherwise hold its upstream connection for ever."""
    n = 256 * MiB
    with proxied(limits={"idle_timeout_ms": 600, "upstream_timeout_ms": 20000}) as (up, px):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.settimeout(10)
        s.connect(("127.0.0.1", px.port))
        try:
            s.sendall(b"GET http://plain.test/bytes?n=%d HTTP/1.1\r\nHost: plain.test\r\n\r\n" % n)
            time.sleep(2.5)  # never read meanwhile
            got, deadline, ended = 0, time.monotonic() + 10, False
            while time.monotonic() < deadline:
                try:
                    r = s.recv(1 << 20)
                except ConnectionResetError:
                    ended = True
                    break
                if not r:
                    ended = True
                    break
                got += len(r)
            assert ended, "the connection was still open 10 s after the client started reading"
            assert got < n, "the whole response arrived: nothing was cut"
        finally:
            s.close()
        assert px.alive(), "proxy died"
        assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"
