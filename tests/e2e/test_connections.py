"""Connections: keep-alive on both sides, the upstream pool, pipelining, idle timeout,
max_connections, concurrent clients."""
import http.client
import json
import os
import socket
import threading
import time

from harness import T, Conn, assert_error, get_json, pattern_bytes, proxied, sha256

REQ = "GET http://plain.test/echo?i=%d HTTP/1.1\r\nHost: plain.test\r\n\r\n"


def test_keepalive_reuses_one_upstream_connection():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            for i in range(5):
                c.send(REQ % i)
                r = c.read_response()
                assert r is not None and r.status == 200, "request %d: %r" % (i, r)
                assert r.json()["query"] == "i=%d" % i, "response %d out of order" % i
        st = up.stats()
        assert st["requests"] == 5, "upstream saw %d requests" % st["requests"]
        assert st["connections"] == 1, "5 keep-alive requests used %d upstream connections" % \
            st["connections"]


def test_upstream_pool_shared_across_client_connections():
    with proxied() as (up, px):
        for i in range(3):
            with Conn(px.port) as c:
                c.send(REQ % i)
                r = c.read_response()
                assert r is not None and r.status == 200, "request %d: %r" % (i, r)
            time.sleep(0.05)
        st = up.stats()
        assert st["requests"] == 3
        assert st["connections"] == 1, "sequential clients used %d upstream connections" % \
            st["connections"]


def test_pool_survives_upstream_closing_idle_connection():
    # /close ends its connection; the next request must open a fresh one and succeed
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/close?n=10 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.body == pattern_bytes(10), "%r" % r
        for i in range(3):
            echo = get_json(px.port, "http://plain.test/echo?after=%d" % i)
            assert echo["query"] == "after=%d" % i


def test_pipelined_requests_answered_in_order():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/sleep?ms=300 HTTP/1.1\r\nHost: plain.test\r\n\r\n"
                   "POST http://plain.test/echo?second HTTP/1.1\r\nHost: plain.test\r\n"
                   "Content-Length: 3\r\n\r\nabc"
                   "HEAD http://plain.test/bytes?n=77 HTTP/1.1\r\nHost: plain.test\r\n\r\n"
                   "GET http://plain.test/bytes?n=10 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r1 = c.read_response()
            assert r1 is not None and r1.status == 200 and r1.body == b"slept", "1st: %r" % r1
            r2 = c.read_response()
            assert r2 is not None and r2.status == 200, "2nd: %r" % r2
            e = r2.json()
            assert e["query"] == "second" and e["body_length"] == 3 and \
                e["body_sha256"] == sha256(b"abc"), "2nd: %r" % e
            r3 = c.read_response(method="HEAD")
            assert r3 is not None and r3.status == 200 and r3.header("content-length") == "77", \
                "3rd (HEAD): %r" % r3
            r4 = c.read_response()
            assert r4 is not None and r4.body == pattern_bytes(10), "4th: %r" % r4


def test_pipelined_many_small_requests():
    with proxied() as (up, px):
        n = 50
        with Conn(px.port) as c:
            c.send("".join(REQ % i for i in range(n)))
            for i in range(n):
                r = c.read_response()
                assert r is not None and r.status == 200, "response %d: %r" % (i, r)
                assert r.json()["query"] == "i=%d" % i, "response %d out of order" % i


def test_pipelined_then_half_closed_every_request_answered():
    """A client that pipelines requests and then shuts down its sending side (as `nc -N` or a
    batch job does) gets every answer, then EOF; a trailing incomplete request is dropped."""
    with proxied() as (up, px):
        n = 20
        for tail in ("", "GET http://plain.test/echo?partial HTTP/1.1\r\nHost: pl"):
            with Conn(px.port) as c:
                c.send("".join(REQ % i for i in range(n)) + tail)
                c.sock.shutdown(socket.SHUT_WR)
                for i in range(n):
                    r = c.read_response()
                    assert r is not None and r.status == 200, "response %d: %r" % (i, r)
                    assert r.json()["query"] == "i=%d" % i, "response %d out of order" % i
                assert c.closed_within(5), "connection still open after the last answer"


def test_idle_client_connection_closed():
    with proxied(limits={"idle_timeout_ms": 500}) as (up, px):
        with Conn(px.port) as c:
            c.send(REQ % 1)
            r = c.read_response()
            assert r is not None and r.status == 200
            t0 = time.monotonic()
            assert c.closed_within(4), "idle connection still open after 4 s (idle 500 ms)"
            dt = time.monotonic() - t0
            assert dt >= 0.3, "idle connection closed after only %.2f s" % dt
        # activity keeps it open: requests every 200 ms for 1.2 s on one connection
        with Conn(px.port) as c:
            for i in range(6):
                c.send(REQ % i)
                r = c.read_response()
                assert r is not None and r.status == 200, "request %d on an active conn" % i
                time.sleep(0.2)


def test_max_connections_stops_accepting():
    with proxied(limits={"max_connections": 2}) as (up, px):
        time.sleep(0.3)  # the start-up probe connection is gone
        c1, c2 = Conn(px.port), Conn(px.port)
        c3 = None
        try:
            for c in (c1, c2):
                c.send(REQ % 1)
                r = c.read_response()
                assert r is not None and r.status == 200, "one of the first two: %r" % r
            c3 = Conn(px.port)  # the kernel completes the handshake (backlog)
            c3.send(REQ % 3)
            try:
                r = c3.read_response(timeout=1.0)
                raise AssertionError("third connection answered while two were open: %r" % r)
            except socket.timeout:
                pass
            # the existing connections are unaffected
            c2.send(REQ % 2)
            r = c2.read_response()
            assert r is not None and r.status == 200, "existing connection at the limit: %r" % r
            c1.close()
            r = c3.read_response(timeout=T)
            assert r is not None and r.status == 200, "third connection after one closed: %r" % r
            assert r.json()["query"] == "i=3"
        finally:
            for c in (c1, c2, c3):
                if c is not None:
                    c.close()


def test_concurrent_clients():
    with proxied() as (up, px):
        errors = []
        body = pattern_bytes(20000)

        def client(k):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=T * 2)
                for i in range(8):
                    if i % 3 == 0:
                        conn.request("POST", "http://plain.test/upload?c=%d&i=%d" % (k, i),
                                     body=body)
                        r = conn.getresponse()
                        e = json.loads(r.read())
                        if e["body_sha256"] != sha256(body) or e["query"] != "c=%d&i=%d" % (k, i):
                            errors.append("client %d req %d: wrong echo %r" % (k, i, e["query"]))
                    elif i % 3 == 1:
                        conn.request("GET", "http://plain.test/bytes?n=%d" % (1000 + k))
                        r = conn.getresponse()
                        d = r.read()
                        if d != pattern_bytes(1000 + k):
                            errors.append("client %d req %d: wrong bytes" % (k, i))
                    else:
                        conn.request("GET", "http://plain.test/chunked?n=5000&chunk=100")
                        r = conn.getresponse()
                        d = r.read()
                        if d != pattern_bytes(5000):
                            errors.append("client %d req %d: wrong chunked body" % (k, i))
                conn.close()
            except Exception as e:  # noqa: BLE001
                errors.append("client %d: %s: %s" % (k, type(e).__name__, e))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert not any(t.is_alive() for t in threads), "clients hung"
        assert not errors, "%d errors, first: %s" % (len(errors), errors[0])
        st = up.stats()
        assert st["requests"] == 16 * 8, "upstream saw %d requests" % st["requests"]
        assert st["connections"] <= 16 * 8, st


def test_client_closes_while_upstream_is_slow():
    with proxied() as (up, px):
        for _ in range(3):
            c = Conn(px.port)
            c.send("GET http://plain.test/sleep?ms=400 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            time.sleep(0.1)
            c.close()
        time.sleep(0.6)  # the upstream answers into closed client connections
        assert px.alive(), "proxy died"
        for i in range(3):
            assert get_json(px.port, "http://plain.test/echo?i=%d" % i)["query"] == "i=%d" % i


def test_client_closes_mid_upload_and_mid_download():
    with proxied() as (up, px):
        c = Conn(px.port)
        c.send("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
               "Content-Length: 10000000\r\n\r\n" + "u" * 100000)
        time.sleep(0.2)
        c.close()
        c = Conn(px.port)
        c.send("GET http://plain.test/bytes?n=50000000 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
        c.read_until(b"\r\n\r\n", time.monotonic() + T)
        c.read_exact(100000, time.monotonic() + T)
        c.close()
        c = Conn(px.port)
        c.send("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
               "Transfer-Encoding: chunked\r\n\r\n1000\r\n" + "c" * 4096 + "\r\n")
        time.sleep(0.2)
        c.close()
        time.sleep(0.3)
        assert px.alive(), "proxy died"
        for i in range(3):
            assert get_json(px.port, "http://plain.test/echo?i=%d" % i)["query"] == "i=%d" % i


def test_upstream_connection_close_not_reused():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/echo?a HTTP/1.1\r\nHost: plain.test\r\n"
                   "X-Mock-Close: 1\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200, "first: %r" % r
            c.send("GET http://plain.test/echo?b HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.json()["query"] == "b", \
                "request after the upstream's Connection: close: %r" % r
        st = up.stats()
        assert st["connections"] == 2, "upstream connections: %d (expected 2)" % st["connections"]


def test_pooled_connection_closed_by_upstream_while_idle():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/closeafter?ms=50 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200, "first: %r" % r
            time.sleep(0.3)  # the upstream has closed the pooled connection meanwhile
            c.send("GET http://plain.test/echo?get HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200, "GET after the pooled conn closed: %r" % r
            c.send("GET http://plain.test/closeafter?ms=50 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200
            time.sleep(0.3)
            c.send("POST http://plain.test/echo?post HTTP/1.1\r\nHost: plain.test\r\n"
                   "Content-Length: 4\r\n\r\nbody")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.json()["body_length"] == 4, \
                "POST after the pooled conn closed: %r" % r


def test_upstream_informational_103_then_200():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/early HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.body == b"after early hints", \
                "response after 103: %r" % r
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.json()["path"] == "/echo", "%r" % r


def test_no_informational_response_to_http10_client():
    """RFC 9110 15.2: a 1xx is not sent to an HTTP/1.0 client; the final response is."""
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/early HTTP/1.0\r\nHost: plain.test\r\n\r\n")
            deadline = time.monotonic() + T
            while not c.eof and time.monotonic() < deadline:
                try:
                    if not c._fill(deadline):
                        break
                except socket.timeout:
                    break
            raw = bytes(c.buf)
            assert raw.startswith(b"HTTP/1.1 200 "), "an HTTP/1.0 client got %r" % raw[:120]
            assert b" 103 " not in raw and raw.endswith(b"after early hints"), "%r" % raw


def test_stalled_request_body_is_408_not_504():
    """The upstream waits for body bytes the client never sends: that is the client's
    timeout (408 request_timeout), not the upstream's (504)."""
    with proxied(limits={"upstream_timeout_ms": 500}) as (up, px):
        with Conn(px.port) as c:
            c.send("POST http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n"
                   "Content-Length: 100\r\n\r\n0123456789")
            assert_error(c.read_response(timeout=5), 408, "request_timeout")


def test_pooled_connection_dead_on_reuse_idempotent_retried():
    # the upstream closes a pooled connection when it gets the next request, without answering:
    # a GET is retried once on a fresh connection
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/armdrop HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.body == b"armed", "%r" % r
            c.send("GET http://plain.test/echo?retried HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200, \
                "idempotent request on a dead pooled connection was not retried: %r" % r
            assert r.json()["query"] == "retried"
        st = up.stats()
        assert st["targets"].count("GET /echo?retried") == 2, "targets %r" % st["targets"]
        assert st["connections"] == 2, "upstream connections %d" % st["connections"]


def test_pooled_connection_dead_on_reuse_put_with_body_retried_post_not():
    # SPEC: a pooled connection that turns out closed is retried once on a fresh one when the
    # request is idempotent (the body goes again from the replay buffer); a POST whose bytes
    # were sent is not retried (the upstream may have acted on it): 502
    body = pattern_bytes(3000)
    with proxied() as (up, px):
        with Conn(px.port) as c:
            for chunked in (False, True):
                c.send("GET http://plain.test/armdrop HTTP/1.1\r\nHost: plain.test\r\n\r\n")
                r = c.read_response()
                assert r is not None and r.body == b"armed", "%r" % r
                if chunked:
                    framing = "Transfer-Encoding: chunked\r\n\r\n"
                    data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
                else:
                    framing = "Content-Length: %d\r\n\r\n" % len(body)
                    data = body
                c.send(("PUT http://plain.test/echo?put=%d HTTP/1.1\r\nHost: plain.test\r\n"
                        % chunked + framing).encode() + data)
                r = c.read_response()
                assert r is not None and r.status == 200, \
                    "PUT with a body on a dead pooled connection was not retried: %r" % r
                assert r.json()["body_length"] == len(body) and \
                    r.json()["body_sha256"] == sha256(body), "the retried body differs"
            c.send("GET http://plain.test/armdrop HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            assert c.read_response().body == b"armed"
            c.send(b"POST http://plain.test/echo?post HTTP/1.1\r\nHost: plain.test\r\n"
                   b"Content-Length: 3000\r\n\r\n" + body)
            assert_error(c.read_response(), 502, "upstream_unavailable")
        st = up.stats()
        for i in (0, 1):
            assert st["targets"].count("PUT /echo?put=%d" % i) == 2, st["targets"]
        assert st["targets"].count("POST /echo?post") == 1, st["targets"]


def test_socket_io_path_is_the_one_logged():
    # io_uring batches where the kernel allows them (this machine's first two passes), plain
    # calls with AUTHPROXY_IO_URING=0 (the third pass) or where a ring is refused; the log says
    # which, and pipelined requests come back in order either way
    forced_off = os.environ.get("AUTHPROXY_IO_URING") == "0"
    with proxied(log={"level": "debug", "format": "text"}) as (up, px):
        with Conn(px.port) as c:
            c.send("".join(REQ % i for i in range(20)))
            for i in range(20):
                r = c.read_response()
                assert r is not None and r.status == 200, "request %d: %r" % (i, r)
                assert r.json()["query"] == "i=%d" % i, "response %d out of order" % i
        out = px.output()
    batched = "socket I/O: batched with io_uring" in out
    plain = "socket I/O: one recv()/send() each" in out
    assert batched != plain, "exactly one socket I/O line expected: %r" % out[-800:]
    if forced_off:
        assert "one recv()/send() each (AUTHPROXY_IO_URING=0)" in out, out[-800:]
    elif plain:
        # a kernel that refuses io_uring is no failure, but the reason must be named
        assert "io_uring unavailable: " in out, out[-800:]
        print("note: io_uring unavailable here; the plain path was tested")
