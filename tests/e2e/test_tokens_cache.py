"""The token cache: reuse, single flight, proactive refresh, minting off the request path, and
the 401 replay (GET, POST with identical body, exactly once, large bodies, client_authorization
keep)."""
import base64
import hashlib
import http.client
import json
import os
import threading
import time
from urllib.parse import unquote_plus

from harness import ASAN, T, hdr, request
from tokenkit import (Stack, api_log, epc, hits, parallel, reqs, rfc, upstream_token)


def test_token_minted_and_attached_upstream():
    # the client's own Authorization is replaced by the minted token; one mint for 3 requests;
    # the token request authenticates with Basic (client_auth default)
    with Stack(lambda m: {"p": rfc(m, "/rfc/p/token")}) as s:
        for i in range(3):
            echo = s.ok("p", "/echo?i=%d" % i, headers={"Authorization": "Bearer client-own"})
            st = s.m.stats()
            assert upstream_token(echo) == st["issued"]["access_tokens"][0], \
                "upstream Authorization %r" % [v for k, v in echo["headers"]
                                               if k.lower() == "authorization"]
        st = s.m.stats()
        [r] = reqs(st, "rfc/p.token")
        basic = hdr(r["headers"], "authorization") or ""
        assert basic.startswith("Basic "), "token request without Basic auth: %r" % basic
        cid, sec = [unquote_plus(x) for x in base64.b64decode(basic[6:]).decode().split(":", 1)]
        c = st["credentials"]["rfc"]
        assert (cid, sec) == (c["client_id"], c["client_secret"]), "token request credentials differ"


def test_token_50_sequential_requests_one_mint():
    with Stack(lambda m: {"epc": epc(m)}) as s:
        c = http.client.HTTPConnection("127.0.0.1", s.px.port, timeout=T)
        try:
            for i in range(50):
                c.request("GET", "http://epc.api.test/v1/loans/%d" % i,
                          headers={"Host": "epc.api.test"})
                r = c.getresponse()
                body = r.read()
                assert r.status == 200, "request %d -> %d %r" % (i, r.status, body[:300])
        finally:
            c.close()
        st = s.m.stats()
        assert hits(st, "epc.token") == 1, "%d token requests for 50 requests" % hits(
            st, "epc.token")
        assert st["api"]["ok"] == 50 and len({e["token"] for e in api_log(st)}) == 1


def test_token_200_concurrent_cold_cache_single_flight():
    # a slow token endpoint (0.5 s) so that all 200 requests wait for the one mint
    n = 200
    with Stack(lambda m: {"epc": epc(m)}, settings={"delay_s": {"epc": 0.5}},
               limits={"token_timeout_ms": 15000}) as s:
        res = parallel(n, lambda i: s.get("epc", "/v1/loans/%d" % i, timeout=30))
        errors = [r for r in res if isinstance(r, BaseException)]
        assert not errors, "%d requests raised, first: %r" % (len(errors), errors[0])
        bad = [(st_, b[:200]) for st_, _, b in res if st_ != 200]
        assert not bad, "%d of %d requests failed, first: %r" % (len(bad), n, bad[0])
        st = s.m.stats()
        assert hits(st, "epc.token") == 1, "%d token requests for %d concurrent requests" % (
            hits(st, "epc.token"), n)
        assert st["api"]["ok"] == n and st["api"]["unauthorized"] == 0


def test_token_401_replay_get():
    with Stack(lambda m: {"epc": epc(m)}) as s:
        t1 = upstream_token(s.ok("epc", "/v1/a"))
        s.m.revoke_all()
        echo = s.ok("epc", "/v1/b")
        t2 = upstream_token(echo)
        st = s.m.stats()
        assert t2 != t1 and t2 == st["issued"]["access_tokens"][-1]
        attempts = api_log(st, "/v1/b")
        assert [(e["status"], e["token"]) for e in attempts] == [(401, t1), (200, t2)], \
            [(e["status"], e["reason"]) for e in attempts]
        assert hits(st, "epc.token") == 2
        # the fresh token is now the cached one
        assert upstream_token(s.ok("epc", "/v1/c")) == t2 and hits(s.m.stats(), "epc.token") == 2


def test_token_401_replay_post_body_identical():
    body = os.urandom(200 * 1024)
    digest = hashlib.sha256(body).hexdigest()
    with Stack(lambda m: {"epc": epc(m)}) as s:
        s.ok("epc", "/warm")
        # Content-Length body
        s.m.revoke_all()
        echo = s.ok("epc", "/v1/upload", method="POST", body=body,
                    headers={"Content-Type": "application/octet-stream"})
        assert echo["body_sha256"] == digest and echo["body_length"] == len(body)
        # chunked body
        s.m.revoke_all()

        def chunks():
            for i in range(0, len(body), 30000):
                yield body[i:i + 30000]

        echo = s.ok("epc", "/v1/chunked", method="POST", body=chunks(), encode_chunked=True,
                    headers={"Content-Type": "application/octet-stream"})
        assert echo["body_sha256"] == digest and echo["body_length"] == len(body)
        st = s.m.stats()
        for path in ("/v1/upload", "/v1/chunked"):
            att = api_log(st, path)
            assert [e["status"] for e in att] == [401, 200], (path, att)
            assert all(e["method"] == "POST" and e["body_sha256"] == digest for e in att), \
                "%s: the replayed body differs: %r" % (
                    path, [(e["body_length"], e["body_sha256"][:12]) for e in att])
        assert hits(st, "epc.token") == 3


def test_token_401_replayed_exactly_once():
    with Stack(lambda m: {"epc": epc(m)}) as s:
        s.ok("epc", "/warm")
        s.m.control(api_reject=True)
        st_, hdrs, body = s.get("epc", "/v1/never")
        assert st_ == 401, "expected the upstream's second 401, got %d %r" % (st_, body[:300])
        assert hdr(hdrs, "www-authenticate") == 'Bearer error="invalid_token"', hdrs
        st_, hdrs, body = s.req("epc", "POST", "/v1/never-post", body=b"x" * 1000)
        assert st_ == 401, "POST: expected 401, got %d" % st_
        st = s.m.stats()
        assert len(api_log(st, "/v1/never")) == 2, \
            "%d upstream attempts (1 request + exactly 1 replay)" % len(api_log(st, "/v1/never"))
        assert len(api_log(st, "/v1/never-post")) == 2
        assert hits(st, "epc.token") <= 3, "%d mints" % hits(st, "epc.token")


def test_token_401_large_body_not_replayed():
    big = os.urandom(300 * 1024)
    with Stack(lambda m: {"epc": epc(m)}, limits={"retry_buffer_bytes": 65536}) as s:
        s.ok("epc", "/warm")
        s.m.revoke_all()
        st_, hdrs, body = s.req("epc", "POST", "/v1/big", body=big,
                                headers={"Content-Type": "application/octet-stream"})
        assert st_ == 401, "a body over retry_buffer_bytes: expected the 401, got %d" % st_
        assert hdr(hdrs, "www-authenticate") == 'Bearer error="invalid_token"'
        st = s.m.stats()
        att = api_log(st, "/v1/big")
        assert len(att) == 1, "a body over retry_buffer_bytes was replayed (%d attempts)" % len(att)
        assert att[0]["body_length"] == len(big) and \
            att[0]["body_sha256"] == hashlib.sha256(big).hexdigest(), "the body was not streamed"
        # the next request works (the rejected token is not used again, or is replayed)
        s.ok("epc", "/v1/after")
        # a small body is still replayed
        s.m.revoke_all()
        echo = s.ok("epc", "/v1/small", method="POST", body=big[:1000])
        assert echo["body_length"] == 1000


def test_token_client_authorization_keep_never_replayed():
    def routes(m, providers):
        return [{"host": "keep.api.test", "upstream": m.api, "provider": "epc",
                 "client_authorization": "keep"}]

    with Stack(lambda m: {"epc": epc(m)}, routes=routes) as s:
        own = s.m.mint_direct()
        r = request(s.px.port, "GET", "http://keep.api.test/v1/own",
                    headers={"Authorization": "Bearer " + own}, timeout=10)
        assert r[0] == 200, r
        assert upstream_token(json.loads(r[2])) == own, "the client's header did not win"
        assert hits(s.m.stats(), "epc.token") == 0, "a token was minted for a kept header"
        # a client's invalid token: its 401 goes back, no replay, no mint
        r = request(s.px.port, "GET", "http://keep.api.test/v1/bad",
                    headers={"Authorization": "Bearer not-a-token"}, timeout=10)
        assert r[0] == 401, r
        st = s.m.stats()
        assert len(api_log(st, "/v1/bad")) == 1, "a request with the client's header was replayed"
        assert hits(st, "epc.token") == 0
        # without a client header the route injects
        r = request(s.px.port, "GET", "http://keep.api.test/v1/none", timeout=10)
        assert r[0] == 200 and hits(s.m.stats(), "epc.token") == 1, r[:2]


def test_token_proactive_refresh_steady_traffic():
    # 3 s tokens, refresh_before_s 1, a token endpoint taking 0.8 s: under steady traffic the
    # replacement is minted in the background; no request waits for it, none fails, the
    # upstream never sees an expired token
    delay = 0.8
    with Stack(lambda m: {"r": rfc(m, "/rfc/r/token", refresh_before_s=1)},
               settings={"lifetime_s": {"rfc/r": 3}, "delay_s": {"rfc/r": delay}}) as s:
        s.ok("r", "/first")
        slow, failed, n = [], [], 0
        t_end = time.monotonic() + 3.6
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            st_, _, body = s.get("r", "/steady/%d" % n)
            dt = time.monotonic() - t0
            n += 1
            if st_ != 200:
                failed.append((st_, body[:200]))
            if dt >= delay * 0.75:
                slow.append(round(dt, 2))
            time.sleep(0.05)
        st = s.m.stats()
        assert not failed, "%d of %d requests failed: %r" % (len(failed), n, failed[0])
        assert st["api"]["unauthorized"] == 0, \
            "%d upstream 401s: expired tokens were sent" % st["api"]["unauthorized"]
        assert hits(st, "rfc/r.token") >= 2, "%d mints in 4.5 s of 3-second tokens" % hits(
            st, "rfc/r.token")
        assert not slow, "requests waited for a refresh (%r s; the mint takes %.1f s)" % (
            slow, delay)
        used = {e["token"] for e in api_log(st)}
        assert len(used) >= 2, "%d distinct tokens upstream in 4.5 s of 3-second tokens" % len(used)


def test_token_mint_does_not_block_the_loop():
    # a 1.5 s mint for one provider: other routes (with and without a provider) keep answering
    with Stack(lambda m: {"slow": rfc(m, "/rfc/slow/token"), "fast": rfc(m, "/rfc/fast/token")},
               settings={"delay_s": {"rfc/slow": 1.5}}, limits={"token_timeout_ms": 6000}) as s:
        out = {}
        th = threading.Thread(target=lambda: out.setdefault("r", s.get("slow", timeout=15)),
                              daemon=True)
        th.start()
        time.sleep(0.3)
        worst = 0.0
        for i in range(5):
            t0 = time.monotonic()
            r = request(s.px.port, "GET", "http://public.test/public/%d" % i, timeout=5)
            assert r[0] == 200, r[:2]
            worst = max(worst, time.monotonic() - t0)
        t0 = time.monotonic()
        s.ok("fast")
        fast = time.monotonic() - t0
        assert "r" not in out, "the slow mint finished too early for this test to mean anything"
        th.join(15)
        assert out.get("r", (0,))[0] == 200, out
        limit = 1.0 if ASAN else 0.5
        assert worst < limit, "a plain request took %.2f s while a mint was in flight" % worst
        assert fast < limit + 0.5, "another provider's mint took %.2f s (serialised?)" % fast


def test_token_401_burst_single_flight():
    # 30 concurrent requests all get a 401 on the same revoked token: the token is dropped
    # once (only if still the cached one) and one fresh token is minted for all replays
    with Stack(lambda m: {"epc": epc(m)}) as s:
        s.ok("epc", "/warm")
        s.m.revoke_all()
        res = parallel(30, lambda i: s.get("epc", "/v1/burst/%d" % i, timeout=20))
        bad = [r if isinstance(r, BaseException) else r[:1] + (r[2][:200],)
               for r in res if isinstance(r, BaseException) or r[0] != 200]
        assert not bad, "%d of 30 replays failed: %r" % (len(bad), bad[0])
        st = s.m.stats()
        assert hits(st, "epc.token") == 2, \
            "%d token requests for one revoked token (30 concurrent 401s)" % hits(st, "epc.token")
