"""Fault injection: the paths where ownership is decided while something is outstanding.

Each test drives the proxy into a place a plain loopback run never reaches (a name resolution
still running when its connection closes, a connect that fails inside the call that starts it,
a replay that resends a body still arriving, a reload during the exit-time revocation, a
/metrics body larger than any fixed buffer, a JWT exp years away, a stop that must end within
drain_ms) and checks that the proxy answers as SPEC says and keeps serving. Under the ASan
build the runner fails any test whose proxy reported a sanitizer error, so a use after free on
these paths fails here even when the answer looked right.

Name resolution and immediate connect failures come from tests/faults/faults.c (LD_PRELOAD).
"""
import json
import os
import re
import signal
import socket
import struct
import time

from harness import (ASAN, T, Conn, Mock, Proxy, assert_error, faults_env, free_port,
                     make_config, plain_route, raw_exchange, request, sha256, wait_until)
from tokenkit import Stack, epc, enable, hits, rfc, upstream_token

GAI_MS = 1000


def slow_route(up, host="slow.test"):
    return {"host": host, "upstream": "http://up.slow.test:%d" % up.port}


def resolved(px, name="up.slow.test"):
    return "faults: getaddrinfo %s answered" % name in px.output()


def started(px, name="up.slow.test"):
    return "faults: getaddrinfo %s started" % name in px.output()


def serves(px, up):
    """The proxy still answers a normal request (after the fault)."""
    st, _, body = request(px.port, "GET", "http://plain.test/echo")
    assert st == 200, "after the fault: %d %r" % (st, body[:300])


def reset_close(sock):
    """Closes with an RST (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def slow_proxy(up, limits=None):
    cfg = make_config(free_port(), [slow_route(up), plain_route(up)], limits=limits)
    return Proxy(cfg, env=faults_env(gai_ms=GAI_MS))


# ---- a connection closed while its name resolves -------------------------------------------

def test_resolve_outlived_by_the_connect_timeout():
    with Mock() as up, slow_proxy(up, {"upstream_connect_timeout_ms": 300}) as px:
        t0 = time.monotonic()
        r = raw_exchange(px.port, "GET http://slow.test/echo HTTP/1.1\r\nHost: slow.test\r\n\r\n")
        assert_error(r, 504, "upstream_timeout")
        assert time.monotonic() - t0 < GAI_MS / 1000.0, "the 504 waited for the resolver"
        # the connection is gone; the resolver answers later into memory that must still be
        # its own (ASan: heap-use-after-free in on_resolved before the fix)
        assert wait_until(lambda: resolved(px), 10), px.output()[-800:]
        serves(px, up)
        assert up.stats()["requests"] == 1, "the closed connection still reached the upstream"


def test_resolve_outlived_by_a_client_reset():
    with Mock() as up, slow_proxy(up) as px:
        c = Conn(px.port)
        c.send("GET http://slow.test/echo HTTP/1.1\r\nHost: slow.test\r\n\r\n")
        assert wait_until(lambda: started(px), 10), px.output()[-800:]
        reset_close(c.sock)
        assert wait_until(lambda: resolved(px), 10), px.output()[-800:]
        serves(px, up)
        # nothing was sent for the request whose client went away
        targets = [t for t in up.stats()["targets"] if "echo" in str(t)]
        assert len(targets) == 1, "upstream saw %r" % targets


def test_resolve_outlived_by_a_client_fin_inside_its_body():
    with Mock() as up, slow_proxy(up) as px:
        c = Conn(px.port)
        c.send("POST http://slow.test/upload HTTP/1.1\r\nHost: slow.test\r\n"
               "Content-Length: 100\r\n\r\n0123456789")
        assert wait_until(lambda: started(px), 10), px.output()[-800:]
        c.sock.shutdown(socket.SHUT_WR)  # 90 declared bytes never come
        assert c.closed_within(T), "the proxy kept a connection whose body cannot complete"
        c.close()
        assert wait_until(lambda: resolved(px), 10), px.output()[-800:]
        serves(px, up)


def test_slow_and_failing_resolution_answers():
    # within the connect timeout a slow resolver only delays; a name that does not resolve is
    # 502 upstream_unavailable
    with Mock() as up:
        routes = [slow_route(up), plain_route(up),
                  {"host": "nx.test", "upstream": "http://up.nxdomain.test:%d" % up.port}]
        with Proxy(make_config(free_port(), routes), env=faults_env(gai_ms=200)) as px:
            st, _, body = request(px.port, "GET", "http://slow.test/echo")
            assert st == 200, "slow resolution: %d %r" % (st, body[:300])
            r = raw_exchange(px.port, "GET http://nx.test/ HTTP/1.1\r\nHost: nx.test\r\n\r\n")
            assert_error(r, 502, "upstream_unavailable")
            serves(px, up)


# ---- connects that fail inside the call that starts them ------------------------------------

def test_connect_failing_at_once_is_502():
    dead = free_port()
    with Mock() as up:
        routes = [plain_route(up), {"host": "unreach.test", "upstream": "http://127.0.0.1:%d" % dead}]
        with Proxy(make_config(free_port(), routes), env=faults_env(unreach_ports=[dead])) as px:
            for _ in range(3):
                r = raw_exchange(px.port, "GET http://unreach.test/ HTTP/1.1\r\n"
                                 "Host: unreach.test\r\n\r\n")
                assert_error(r, 502, "upstream_unavailable")
            assert "connect failed" in px.output(), px.output()[-600:]
            serves(px, up)


def test_connect_failing_at_once_for_waiters_of_one_mint_with_a_full_free_list():
    # 300 requests wait for one mint; when it lands each connect fails at once. Past the 256
    # exchanges the free list keeps, the 502 destroys the exchange, which the connect path
    # wrote to afterwards (ASan: heap-use-after-free in connect_upstream before the fix).
    n = 300
    dead = free_port()
    mint_s = 2.0

    def routes(m, providers):
        return [{"host": "unreach.api.test", "upstream": "http://127.0.0.1:%d" % dead,
                 "provider": "rfc", "allow_plaintext": True},
                {"host": "rfc.api.test", "upstream": m.api, "provider": "rfc"}]

    with Stack(lambda m: {"rfc": rfc(m)}, routes=routes, admin=True,
               settings={"delay_s": {"rfc": mint_s}}, limits={"token_timeout_ms": 10000},
               env=faults_env(unreach_ports=[dead])) as s:
        t0 = time.monotonic()
        conns = []
        try:
            for _ in range(n):
                c = Conn(s.px.port, timeout=T + mint_s)
                c.send("GET http://unreach.api.test/x HTTP/1.1\r\nHost: unreach.api.test\r\n\r\n")
                conns.append(c)
            st, _, body = s.admin_req("GET", "/metrics")
            assert st == 200
            m = re.search(rb"^authproxy_open_connections (\d+)$", body, re.M)
            assert m and int(m.group(1)) == n, "open connections: %r" % (m and m.group(1))
            st, _, body = s.admin_req("GET", "/tokens")
            assert json.loads(body)["rfc"]["state"] == "minting", body[:300]
            assert time.monotonic() - t0 < mint_s, "the requests did not all wait for the mint"
            for c in conns:
                assert_error(c.read_response(timeout=T + mint_s), 502, "upstream_unavailable")
        finally:
            for c in conns:
                c.close()
        st = s.m.stats()
        assert st["minted"]["rfc"]["client_credentials"] == 1, st["minted"]
        s.ok("rfc")  # the proxy still serves, with the token it minted


# ---- /metrics larger than any fixed buffer ---------------------------------------------------

def test_metrics_with_1000_routes():
    n = 1000
    with Mock() as up:
        routes = [{"path_prefix": "/r%d-%s/" % (i, "p" * 40), "strip_prefix": True,
                   "upstream": "http://127.0.0.1:%d" % up.port} for i in range(n)]
        admin = free_port()
        cfg = make_config(free_port(), routes, admin_listen="127.0.0.1:%d" % admin)
        with Proxy(cfg) as px:
            import http.client
            c = http.client.HTTPConnection("127.0.0.1", px.port, timeout=T)
            try:
                for i in range(n):
                    c.request("GET", "/r%d-%s/echo" % (i, "p" * 40))
                    r = c.getresponse()
                    r.read()
                    assert r.status == 200, "route %d: %d" % (i, r.status)
            finally:
                c.close()
            assert wait_until(lambda: px.alive(), 1)
            st, hdrs, body = request(admin, "GET", "/metrics")
            assert st == 200, "metrics: %d" % st
            text = body.decode()
            series = re.findall(r'^authproxy_route_requests_total\{route="(\d+)",.*class="2xx"\} 1$',
                                text, re.M)
            assert sorted(int(x) for x in series) == list(range(n)), \
                "%d route series of %d" % (len(series), n)
            assert len(body) > 100 * 1024, "a body of %d bytes cannot have them all" % len(body)
            assert text.endswith("\n"), "the body ends inside a line: %r" % text[-200:]
            for line in text.splitlines():  # nothing cut or overwritten anywhere
                assert line.startswith("# ") or re.match(
                    r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^{}]*\})? -?[0-9.e+]+$", line), "bad line %r" % line[:200]
            st, _, body = request(admin, "GET", "/tokens")
            assert st == 200 and json.loads(body) == {}


# ---- a 401 replay while the upload is still arriving -----------------------------------------

def test_replay_401_while_the_upload_is_still_arriving():
    # The API answers 401 to the first token before reading a byte of the body; while the proxy
    # mints again the client sends more, and more after the replay has begun. The replay must
    # carry exactly the client's body (before the fix the replay buffer was reallocated under
    # an iovec that pointed into it: freed heap went upstream in place of the body).
    body = os.urandom(20000)
    parts = (body[:5000], body[5000:10000], body[10000:])
    with Stack(lambda m: {"rfc": rfc(m)},
               settings={"delay_s": {"rfc": 0.5}, "api_reject_early": 1}) as s:
        with Conn(s.px.port, timeout=T + 5) as c:
            c.send("POST http://rfc.api.test/upload HTTP/1.1\r\nHost: rfc.api.test\r\n"
                   "Content-Length: %d\r\n\r\n" % len(body))
            c.send(parts[0])
            assert wait_until(lambda: s.m.stats()["api"]["unauthorized"] == 1, T), \
                "the API never refused the first token"
            c.send(parts[1])  # arrives while the proxy mints again
            assert wait_until(lambda: s.m.stats()["minted"]["rfc"]["client_credentials"] == 2,
                              T), "no second mint"
            c.send(parts[2])
            r = c.read_response(timeout=T + 5)
        assert r is not None and r.status == 200, r
        echo = r.json()
        assert echo["body_length"] == len(body), echo["body_length"]
        assert echo["body_sha256"] == sha256(body), "the replayed body differs from the client's"
        log = s.m.stats()["api"]["log"]
        assert [e["status"] for e in log] == [401, 200], [(e["status"], e["reason"]) for e in log]
        assert log[0]["token"] != log[1]["token"], "the replay reused the refused token"


# ---- signals during the exit-time revocation -------------------------------------------------

def test_sighup_during_the_exit_revocation():
    # SIGTERM starts the revocation (slow endpoint); a SIGHUP with changed credentials arrives
    # while it runs. Before the fix the reload retired the revoking slot and the end of the
    # revocation freed it twice (libuv's assertion: exit -6).
    provs = lambda m: {"epc": epc(m, revoke_on_exit=True,  # noqa: E731
                                  revoke_url=m.url("/oauth2/v1/token/revocation"))}
    with Stack(provs, settings={"delay_s": {"epc.revoke": 1.0}},
               limits={"drain_ms": 5000}) as s:
        tok = upstream_token(s.ok("epc"))
        os.kill(s.px.pid, signal.SIGTERM)
        assert wait_until(lambda: hits(s.m.stats(), "epc.revoke") == 1, T), "no revocation"
        cfg = dict(s.cfg)
        cfg["providers"] = {"epc": dict(cfg["providers"]["epc"], client_id="changed-client")}
        with open(s.px.cfg_path, "w") as f:
            json.dump(cfg, f)
        os.kill(s.px.pid, signal.SIGHUP)
        try:
            s.px.proc.wait(timeout=T)
        except Exception:
            raise AssertionError("the proxy did not exit: %s" % s.px.output()[-800:])
        rc = s.px.stop()
        assert rc == 0, "exit status %r: %s" % (rc, s.px.output()[-800:])
        revs = s.m.stats()["revocations"]
        assert [r["token"] for r in revs] == [tok], revs
        assert "reload ignored: stopping" in s.px.output()


def test_stop_is_bounded_by_drain_ms_as_a_whole():
    # an in-flight request holds the drain for all of drain_ms, then the revocation would hang:
    # the stop still ends by drain_ms (it used to take the drain, then drain_ms more)
    drain = 1500
    provs = lambda m: {"epc": epc(m, revoke_on_exit=True,  # noqa: E731
                                  revoke_url=m.url("/oauth2/v1/token/revocation"))}

    def routes(m, providers):
        return [{"host": "epc.api.test", "upstream": m.api, "provider": "epc"},
                {"host": "slow.test", "upstream": "http://127.0.0.1:%d" % slow.port}]

    with Mock() as slow:
        with Stack(provs, routes=routes, settings={"fail": {"epc.revoke": "hang"}},
                   limits={"drain_ms": drain, "upstream_timeout_ms": 10000}) as s:
            s.ok("epc")
            c = Conn(s.px.port, timeout=T)
            c.send("GET http://slow.test/sleep?ms=8000 HTTP/1.1\r\nHost: slow.test\r\n\r\n")
            assert wait_until(lambda: slow.stats()["requests"] >= 1, T)
            t0 = time.monotonic()
            os.kill(s.px.pid, signal.SIGTERM)
            s.px.proc.wait(timeout=drain / 1000.0 + 5)
            dt = time.monotonic() - t0
            c.close()
            assert s.px.stop() == 0
            limit = drain / 1000.0 + (0.8 if ASAN else 0.5)
            assert dt < limit, "the stop took %.2f s with drain_ms %d" % (dt, drain)
            assert "token not revoked" in s.px.output() or \
                "revocation did not finish in time" in s.px.output(), s.px.output()[-800:]


def test_a_second_sigterm_exits_at_once():
    with Mock() as up:
        routes = [plain_route(up)]
        with Proxy(make_config(free_port(), routes, limits={"drain_ms": 20000})) as px:
            c = Conn(px.port, timeout=T)
            c.send("GET http://plain.test/sleep?ms=15000 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            assert wait_until(lambda: up.stats()["requests"] >= 1, T)
            os.kill(px.pid, signal.SIGTERM)
            assert wait_until(lambda: "draining" in px.output(), T)
            assert px.alive(), "the first SIGTERM did not wait for the request in flight"
            t0 = time.monotonic()
            os.kill(px.pid, signal.SIGTERM)
            px.proc.wait(timeout=5)
            assert time.monotonic() - t0 < 2, "the second SIGTERM did not exit at once"
            assert px.stop() == 0
            c.close()


# ---- token responses ------------------------------------------------------------------------

def test_jwt_exp_years_away_is_a_failed_mint():
    # Enable's tokens are JWTs whose exp the preset trusts; one of 1e17 overflowed exp * 1000
    # (UBSan) and cached the token for ever
    with Stack(lambda m: {"enable": enable(m)},
               settings={"lifetime_s": {"enable": 1e17}, "omit_expires_in": {"enable": True}}) as s:
        err = assert_error(s.get("enable"), 503, "token_unavailable")
        assert "exp" in err["detail"], err
        s.m.control(lifetime_s={"enable": 3600})
        # after the backoff (at most a second here) the next request mints a usable token
        assert wait_until(lambda: s.get("enable")[0] == 200, 5), "no token once exp is sane"
