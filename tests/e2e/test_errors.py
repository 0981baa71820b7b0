"""The error table: every error authproxy produces is JSON with the right status and code."""
import select
import socket
import time

from harness import (VIA, Conn, Mock, Proxy, assert_error, closed_port, free_port, get_json,
                     make_config, plain_route, proxied, request)


def test_508_loop_detected():
    with proxied() as (up, px):
        for via in ("1.1 " + VIA, "1.0 other, 1.1 %s" % VIA, "1.1 %s, 1.1 after" % VIA):
            st, hdrs, body = request(px.port, "GET", "http://plain.test/echo",
                                     headers={"Via": via})
            assert_error((st, hdrs, body), 508, "loop_detected")
        # as a second Via header line too
        with Conn(px.port) as c:
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n"
                   "Via: 1.1 first\r\nVia: 1.1 %s\r\n\r\n" % VIA)
            assert_error(c.read_response(), 508, "loop_detected")
        assert up.stats()["requests"] == 0, "a looping request reached the upstream"


def test_502_upstream_unavailable_connection_refused():
    dead = closed_port()
    routes = lambda up: [plain_route(up), {"host": "dead.test",  # noqa: E731
                                           "upstream": "http://127.0.0.1:%d" % dead}]
    with proxied(routes=routes) as (up, px):
        t0 = time.monotonic()
        st, hdrs, body = request(px.port, "GET", "http://dead.test/echo")
        assert_error((st, hdrs, body), 502, "upstream_unavailable")
        assert time.monotonic() - t0 < 5, "refused connection took too long to report"
        # the proxy keeps serving other routes
        assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"


def test_502_upstream_closes_without_answer():
    with proxied() as (up, px):
        st, hdrs, body = request(px.port, "GET", "http://plain.test/drop")
        assert_error((st, hdrs, body), 502, "upstream_unavailable")
        assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"


def test_502_upstream_answers_garbage():
    with proxied() as (up, px):
        st, hdrs, body = request(px.port, "GET", "http://plain.test/garbage")
        assert_error((st, hdrs, body), 502, "upstream_unavailable")
        assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"


def test_504_upstream_timeout():
    with proxied(limits={"upstream_timeout_ms": 500}) as (up, px):
        t0 = time.monotonic()
        st, hdrs, body = request(px.port, "GET", "http://plain.test/sleep?ms=3000", timeout=10)
        dt = time.monotonic() - t0
        assert_error((st, hdrs, body), 504, "upstream_timeout")
        assert 0.4 <= dt < 2.5, "504 after %.2f s with upstream_timeout_ms 500" % dt
        # the proxy keeps serving
        assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"


def test_504_upstream_connect_timeout():
    # a listener whose accept queue is full drops SYNs, so a connect to it hangs: the proxy
    # gives up after upstream_connect_timeout_ms with 504 upstream_timeout
    lst = socket.socket()
    fillers = []
    try:
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        port = lst.getsockname()[1]
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            try:
                f.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(f)
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", port))
            hung = False
        except socket.timeout:
            hung = True
        finally:
            probe.close()
        assert hung, "precondition: a connect to a listener with a full queue should hang"
        routes = lambda up: [plain_route(up), {"host": "hang.test",  # noqa: E731
                                               "upstream": "http://127.0.0.1:%d" % port}]
        with proxied(routes=routes, limits={"upstream_connect_timeout_ms": 400,
                                            "upstream_timeout_ms": 10000}) as (up, px):
            t0 = time.monotonic()
            st, hdrs, body = request(px.port, "GET", "http://hang.test/x", timeout=10)
            dt = time.monotonic() - t0
            assert_error((st, hdrs, body), 504, "upstream_timeout")
            assert 0.3 <= dt < 3, "504 after %.2f s with upstream_connect_timeout_ms 400" % dt
            assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"
    finally:
        for f in fillers:
            f.close()
        lst.close()


def test_504_does_not_hit_fast_requests():
    with proxied(limits={"upstream_timeout_ms": 1500}) as (up, px):
        st, _, body = request(px.port, "GET", "http://plain.test/sleep?ms=300")
        assert st == 200 and body == b"slept", "a 300 ms upstream under a 1.5 s timeout: %d" % st


def test_405_connect_not_supported():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("CONNECT plain.test:443 HTTP/1.1\r\nHost: plain.test:443\r\n\r\n")
            r = c.read_response(method="CONNECT")
        assert_error(r, 405, "connect_not_supported")
        assert up.stats()["requests"] == 0


def test_408_request_timeout():
    with proxied(limits={"header_timeout_ms": 500}) as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\nX-Partial: ")
            t0 = time.monotonic()
            r = c.read_response(timeout=5)
            dt = time.monotonic() - t0
            assert_error(r, 408, "request_timeout")
            assert 0.3 <= dt < 3, "408 after %.2f s with header_timeout_ms 500" % dt
            assert c.closed_within(3), "connection not closed after 408"
        assert up.stats()["requests"] == 0


def test_408_slowloris_trickle():
    # header bytes trickling in do not extend the header deadline
    with proxied(limits={"header_timeout_ms": 800}) as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n")
            t0 = time.monotonic()
            fired = None
            for i in range(40):  # at most 4 s of trickling
                time.sleep(0.1)
                readable, _, _ = select.select([c.sock], [], [], 0)
                if readable:
                    fired = time.monotonic() - t0
                    break
                try:
                    c.send("X-Slow-%d: v\r\n" % i)
                except OSError:
                    fired = time.monotonic() - t0
                    break
            assert fired is not None, "header deadline never fired while headers trickled in"
            assert fired < 2.5, "header deadline fired only after %.1f s (800 ms)" % fired
            try:
                r = c.read_response(timeout=3)
            except OSError:
                r = None
            if r is not None:
                assert_error(r, 408, "request_timeout")
        assert up.stats()["requests"] == 0


def test_503_token_unavailable():
    dead = closed_port()
    with Mock(tls=True) as up:
        port = free_port()
        cfg = make_config(port, [{"host": "t.test", "upstream": "https://localhost:%d" % up.port,
                                  "provider": "tp"}],
                          providers={"tp": {"token_url": "https://127.0.0.1:%d/token" % dead,
                                            "client_id": "id", "client_secret": "sec"}})
        with Proxy(cfg) as px:
            t0 = time.monotonic()
            st, hdrs, body = request(px.port, "GET", "http://t.test/echo", timeout=10)
            obj = assert_error((st, hdrs, body), 503, "token_unavailable")
            assert obj.get("provider") == "tp", "error does not name the provider: %r" % obj
            assert time.monotonic() - t0 < 5, "token failure took too long"
            # during backoff requests fail fast with the last error
            t0 = time.monotonic()
            st, hdrs, body = request(px.port, "GET", "http://t.test/echo", timeout=10)
            assert_error((st, hdrs, body), 503, "token_unavailable")
            assert time.monotonic() - t0 < 2, "second request did not fail fast"
        assert up.stats()["requests"] == 0, "the upstream got a request without a token"


# test_502_token_rejected and test_504_token_timeout live in test_tokens_failures.py (with the
# mock providers), like every token test.


def test_error_bodies_are_single_json_objects():
    # every authproxy error has exactly one Content-Length/JSON body and a sane status line
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://nowhere.test/ HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 403 and r.complete, "%r" % r
            assert r.version == "HTTP/1.1"
            obj = r.json()
            assert set(obj) >= {"error", "detail"}, obj
            # the connection is still usable after a routing error
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r2 = c.read_response()
            if r2 is not None:  # closing after an error is acceptable, answering wrong is not
                assert r2.status == 200 and r2.json()["path"] == "/echo", "%r" % r2
