"""A failing token endpoint: the right JSON error, within token_timeout_ms, without hammering
the endpoint, Retry-After honoured, recovery after it heals; rejected credentials and scopes;
token responses that must not become tokens."""
import json
import time

from harness import ASAN, assert_error, hdr
from tokenkit import Stack, enable, epc, hits, parallel, reqs, rfc

BURST = 100


def _retry_after(hdrs):
    v = hdr(hdrs, "retry-after")
    if v is None:
        return None
    assert v.strip().isdigit() and int(v) >= 1, "Retry-After %r is not a positive integer" % v
    return int(v)


def _outage(mode, status, code, token_timeout_ms=3000, also=()):
    """The endpoint fails (mode); the first request gets status/code; a burst of BURST
    requests fails fast and costs the endpoint at most 5 requests; after heal it recovers."""
    ok_codes = {(status, code)} | set(also)
    with Stack(lambda m: {"epc": epc(m)}, settings={"fail": {"epc": mode}},
               limits={"token_timeout_ms": token_timeout_ms}) as s:
        t0 = time.monotonic()
        r = s.get("epc", "/v1/first", timeout=15)
        dt = time.monotonic() - t0
        obj = assert_error(r, status, code)
        assert obj.get("provider") == "epc", "error does not name the provider: %r" % obj
        assert dt < token_timeout_ms / 1000.0 + 2, "the error took %.1f s" % dt

        def one(i):
            t = time.monotonic()
            res = s.get("epc", "/v1/burst/%d" % i, timeout=15)
            return res, time.monotonic() - t

        res = parallel(BURST, one)
        errs = [x for x in res if isinstance(x, BaseException)]
        assert not errs, "burst requests raised: %r" % errs[0]
        slowest = max(d for _, d in res)
        with_ra = 0
        for (st_, hdrs, body), _ in res:
            assert st_ != 200, "a request succeeded while the token endpoint was down"
            code_seen = json.loads(body).get("error") if body[:1] == b"{" else "(not JSON)"
            err = assert_error((st_, hdrs, body), st_, code_seen)  # JSON, detail, content type
            assert (st_, err["error"]) in ok_codes, \
                "burst during the outage: %d %r" % (st_, body[:300])
            if _retry_after(hdrs):
                with_ra += 1
        assert slowest < token_timeout_ms / 1000.0 + (3 if ASAN else 1.5), \
            "a request during the outage took %.1f s (not failing fast)" % slowest
        st = s.m.stats()
        n = hits(st, "epc.token")
        assert n <= 5, "%d requests during the outage cost the token endpoint %d requests" % (
            BURST + 1, n)
        assert s.m.api_port and st["api"]["requests"] == 0, "the upstream got tokenless requests"
        s.m.heal()
        t_heal = time.monotonic()
        last = None
        while time.monotonic() - t_heal < 20:
            last = s.get("epc", "/v1/recovered", timeout=15)
            if last[0] == 200:
                break
            time.sleep(0.2)
        assert last[0] == 200, "no recovery 20 s after the endpoint healed: %d %r" % (
            last[0], last[2][:300])
        return with_ra


def test_token_endpoint_500():
    with_ra = _outage("500", 503, "token_unavailable")
    assert with_ra >= BURST // 2, \
        "only %d of %d requests failing fast during backoff carried Retry-After" % (with_ra, BURST)


def test_token_endpoint_garbage():
    _outage("garbage", 503, "token_unavailable")


def test_token_endpoint_hang():
    # no answer at all: 504 token_timeout within token_timeout_ms; while in backoff 503 is fine
    _outage("hang", 504, "token_timeout", token_timeout_ms=800,
            also=[(503, "token_unavailable")])


def test_504_token_timeout():
    with Stack(lambda m: {"tp": rfc(m, "/rfc/tp/token")}, settings={"delay_s": {"rfc/tp": 4}},
               limits={"token_timeout_ms": 500}) as s:
        t0 = time.monotonic()
        r = s.get("tp", "/echo", timeout=10)
        dt = time.monotonic() - t0
        obj = assert_error(r, 504, "token_timeout")
        assert obj.get("provider") == "tp", "error does not name the provider: %r" % obj
        assert dt < 3, "token_timeout after %.1f s with token_timeout_ms 500" % dt
        assert s.m.stats()["api"]["requests"] == 0, "the upstream got a request"


def test_token_retry_after_honoured():
    # 429 and 503 with Retry-After: 2. The endpoint heals at once, but the proxy must not ask
    # again before 2 s; meanwhile requests fail fast with Retry-After.
    provs = lambda m: {"ra429": rfc(m, "/rfc/ra429/token"),  # noqa: E731
                       "ra503": rfc(m, "/rfc/ra503/token")}
    with Stack(provs, settings={"fail": {"rfc/ra429": "429", "rfc/ra503": "503"},
                                "retry_after": 2}) as s:
        t_fail = {}
        for name in ("ra429", "ra503"):
            assert_error(s.get(name), 503, "token_unavailable")
            t_fail[name] = time.monotonic()
        s.m.heal()
        # 1.5 s of requests: every one fails fast with a Retry-After, none reaches the endpoint
        while time.monotonic() - t_fail["ra429"] < 1.5:
            for name in ("ra429", "ra503"):
                t0 = time.monotonic()
                r = s.get(name)
                assert r[0] != 200 or time.monotonic() - t_fail[name] >= 1.7, \
                    "%s: a token was minted %.1f s after Retry-After: 2" % (
                        name, time.monotonic() - t_fail[name])
                assert_error(r, 503, "token_unavailable")
                ra = _retry_after(r[1])
                assert ra is not None and ra <= 2, "%s: fail-fast Retry-After %r" % (
                    name, hdr(r[1], "retry-after"))
                assert time.monotonic() - t0 < 1.0, "not failing fast"
            time.sleep(0.2)
        st = s.m.stats()
        for key in ("rfc/ra429", "rfc/ra503"):
            assert hits(st, key + ".token") == 1, "%s asked again before Retry-After (%d)" % (
                key, hits(st, key + ".token"))
        for name in ("ra429", "ra503"):
            r = None
            while time.monotonic() - t_fail[name] < 12:
                r = s.get(name)
                if r[0] == 200:
                    break
                time.sleep(0.2)
            assert r[0] == 200, "%s: no token 12 s after Retry-After: 2: %r" % (name, r[2][:300])


def test_502_token_rejected():
    # invalid_scope (Enable) and invalid_client (EPC) are surfaced with the provider's error
    provs = lambda m: {"enable": enable(m, scope="read:deals write:deals"),  # noqa: E731
                       "epc": epc(m)}
    with Stack(provs, env={"EPC_CLIENT_SECRET": "not-the-secret"}) as s:
        for name, err in (("enable", "invalid_scope"), ("epc", "invalid_client")):
            obj = assert_error(s.get(name), 502, "token_rejected")
            assert err in obj["detail"], "detail lacks the provider's error %s: %r" % (err, obj)
            assert obj.get("provider") == name, "error does not name the provider: %r" % obj
        for i in range(10):
            for name in ("enable", "epc"):
                assert_error(s.get(name), 502, "token_rejected")
        st = s.m.stats()
        assert hits(st, "enable.token") <= 5 and hits(st, "epc.token") <= 5, \
            "rejected credentials hammered: %r" % st["hits"]
        assert [r["error"] for r in reqs(st, "enable.token")][0] == "invalid_scope"
        assert st["api"]["requests"] == 0, "the upstream got a request"


def test_token_bad_responses_are_failed_mints():
    modes = {"big": "big", "zero": "expires_zero", "neg": "expires_negative",
             "noat": "no_access_token", "mac": "mac", "lower": "bearer_lower"}
    provs = lambda m: {n: rfc(m, "/rfc/%s/token" % n) for n in modes}  # noqa: E731
    with Stack(provs, settings={"fail": {"rfc/" + n: md for n, md in modes.items()}}) as s:
        for name in ("big", "zero", "neg", "noat"):
            assert_error(s.get(name), 503, "token_unavailable")
        r = s.get("mac")
        assert r[0] in (502, 503), "token_type mac accepted as a bearer token: %d" % r[0]
        assert_error(r, r[0], "token_rejected" if r[0] == 502 else "token_unavailable")
        assert s.get("lower")[0] == 200, "token_type \"bearer\" (lower case) refused"
        st = s.m.stats()
        for name in modes:
            assert hits(st, "rfc/%s.token" % name) >= 1, "%s: no token request" % name
        assert [e["key"] for e in st["api"]["log"]] == ["rfc/lower"], \
            "tokens from failed mints reached the upstream: %r" % [e["key"]
                                                                   for e in st["api"]["log"]]
