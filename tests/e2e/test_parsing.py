"""Parser robustness: heads and bodies split at every byte, heads larger than one read buffer,
deep pipelines, many connections at once."""

import time

from harness import T, Conn, get_json, pattern_bytes, proxied, sha256


def test_request_sent_one_byte_at_a_time():
    with proxied() as (up, px):
        req = ("POST http://plain.test/upload?split=1 HTTP/1.1\r\nHost: plain.test\r\n"
               "X-A: alpha\r\nX-B: beta\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
               "GET http://plain.test/echo?next HTTP/1.1\r\nHost: plain.test\r\n\r\n").encode()
        with Conn(px.port) as c:
            for i in range(len(req)):
                c.send(req[i:i + 1])
                if i % 8 == 0:
                    time.sleep(0.001)
            r = c.read_response()
            assert r is not None and r.status == 200, "%r" % r
            e = r.json()
            assert e["query"] == "split=1" and e["body_sha256"] == sha256(b"hello world"), e
            assert [v for k, v in e["headers"] if k == "X-B"] == ["beta"], e["headers"]
            r = c.read_response()
            assert r is not None and r.status == 200 and r.json()["query"] == "next", "%r" % r


def test_large_request_head_spanning_buffers():
    with proxied() as (up, px):
        hdrs = "".join("X-Big-%02d: %s\r\n" % (i, chr(97 + i % 26) * 1000) for i in range(40))
        with Conn(px.port) as c:
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n%s\r\n" % hdrs)
            r = c.read_response()
        assert r is not None and r.status == 200, "40 KB of headers: %r" % r
        got = {k: v for k, v in r.json()["headers"] if k.startswith("X-Big-")}
        assert len(got) == 40, "upstream got %d of 40 big headers" % len(got)
        for i in range(40):
            assert got["X-Big-%02d" % i] == chr(97 + i % 26) * 1000, "header %d mangled" % i


def test_large_response_head_from_upstream():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/bigheaders?n=40&size=1000 HTTP/1.1\r\n"
                   "Host: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.body == b"big headers", "%r" % r
            big = [(k, v) for k, v in r.headers if k.startswith("X-Big-")]
            assert len(big) == 40, "client got %d of 40 big response headers" % len(big)
            for k, v in big:
                i = int(k[6:])
                assert v == ("%d" % i) * (1000 // len(str(i))), "response header %s mangled" % k
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200


def test_deep_pipeline_larger_than_a_buffer():
    with proxied() as (up, px):
        n = 400
        reqs = ["GET http://plain.test/sleep?ms=200 HTTP/1.1\r\nHost: plain.test\r\n\r\n"]
        reqs += ["GET http://plain.test/bytes?n=%d HTTP/1.1\r\nHost: plain.test\r\n"
                 "X-Pad: %s\r\n\r\n" % (i, "p" * 40) for i in range(1, n)]
        data = "".join(reqs)
        assert len(data) > 40000
        with Conn(px.port, timeout=30) as c:
            c.send(data)
            r = c.read_response(timeout=10)
            assert r is not None and r.body == b"slept", "1st: %r" % r
            for i in range(1, n):
                r = c.read_response(timeout=10)
                assert r is not None and r.status == 200, "response %d: %r" % (i, r)
                assert r.body == pattern_bytes(i), "response %d out of order or wrong" % i


def test_pipelined_chunked_post_then_get_in_one_write():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                   "POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
                   "Content-Length: 4\r\n\r\nwxyz"
                   "GET http://plain.test/echo?third HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.json()["body_sha256"] == sha256(b"abc"), "1st %r" % r
            r = c.read_response()
            assert r is not None and r.json()["body_sha256"] == sha256(b"wxyz"), "2nd %r" % r
            r = c.read_response()
            assert r is not None and r.json()["query"] == "third", "3rd %r" % r


def test_many_simultaneous_connections():
    with proxied() as (up, px):
        conns = []
        try:
            for _ in range(200):
                conns.append(Conn(px.port))
            for i, c in enumerate(conns):
                c.send("GET http://plain.test/echo?c=%d HTTP/1.1\r\nHost: plain.test\r\n\r\n" % i)
            for i, c in enumerate(conns):
                r = c.read_response(timeout=T * 2)
                assert r is not None and r.status == 200, "connection %d: %r" % (i, r)
                assert r.json()["query"] == "c=%d" % i, "connection %d got another's response" % i
        finally:
            for c in conns:
                c.close()
        assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"

