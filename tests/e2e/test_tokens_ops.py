"""Operating the token engine: --token, revocation on exit, the admin endpoints, connection
reuse to token endpoints, and secrets that never leave the process."""
import json
import os
import re
import signal
import socket
import threading
import time

from harness import assert_error, logdir, run_cli, write_config
from tokenkit import (MockProviders, Stack, enable, epc, eptura, form, hget, hits, reqs, rfc,
                      upstream_token)


def _metric(text, name_part, label_part, exclude=("error", "fail")):
    """Sum of the samples whose metric name contains name_part and whose labels contain
    label_part (skipping samples labelled as errors)."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        if name_part in name and label_part in labels and \
                not any(x in labels for x in exclude):
            total += float(value)
            found = True
    return total if found else None


def test_token_cli_prints_token():
    with MockProviders() as m:
        provs = {"epc": epc(m), "eptura": eptura(m),
                 "wrong": epc(m, client_secret="${WRONG_SECRET}"),
                 "down": rfc(m, "/rfc/down/token")}
        m.control(fail={"rfc/down": "500"})
        from harness import free_port, make_config
        cfg = write_config(make_config(free_port(), [], provs))
        env = dict(m.env(), WRONG_SECRET="wrong-" + "x" * 20)
        r = run_cli(["-c", cfg, "--token", "epc"], env=env)
        st = m.stats()
        assert r.returncode == 0, "--token epc: exit %d: %s" % (r.returncode, r.stderr[-500:])
        assert r.stdout.strip() == st["issued"]["access_tokens"][0] and \
            r.stdout.count("\n") <= 1, "--token printed %r" % r.stdout[:300]
        assert st["issued"]["access_tokens"][0] not in r.stderr
        r = run_cli(["-c", cfg, "--token", "eptura"], env=env)
        st = m.stats()
        assert r.returncode == 0, "--token eptura: exit %d: %s" % (r.returncode, r.stderr[-500:])
        assert r.stdout.strip() == st["issued"]["access_tokens"][-1], r.stdout[:300]
        assert hits(st, "eptura.auth") == 1 and hits(st, "eptura.token") == 1
        for name, why in (("nope", None), ("wrong", "invalid_client"), ("down", None)):
            t0 = time.monotonic()
            r = run_cli(["-c", cfg, "--token", name], env=env)
            assert r.returncode != 0, "--token %s succeeded" % name
            assert r.stdout == "", "--token %s printed %r on stdout" % (name, r.stdout[:200])
            assert r.stderr.strip(), "--token %s failed silently" % name
            if why:
                assert why in r.stderr, "--token %s: stderr lacks %s: %r" % (name, why,
                                                                           r.stderr[-300:])
            assert time.monotonic() - t0 < 15, "--token %s took %.0f s" % (
                name, time.monotonic() - t0)


def test_token_revoked_on_sigterm():
    provs = lambda m: {  # noqa: E731
        "epc": epc(m, revoke_on_exit=True, revoke_url=m.url("/oauth2/v1/token/revocation"),
                   introspect_url=m.url("/oauth2/v1/token/introspection")),
        "eptura": eptura(m, revoke_on_exit=True),
        "keep": rfc(m, "/rfc/keep/token", revoke_url=m.url("/rfc/keep/revoke")),
    }
    with Stack(provs) as s:
        toks = {n: upstream_token(s.ok(n)) for n in ("epc", "eptura", "keep")}
        t0 = time.monotonic()
        rc = s.px.stop()
        dt = time.monotonic() - t0
        assert rc == 0, "exit status %r after SIGTERM" % rc
        assert dt < 5, "exit took %.1f s" % dt
        st = s.m.stats()
        revs = {r["endpoint"]: r for r in st["revocations"]}
        assert set(revs) == {"epc.revoke", "eptura.revoke"}, \
            "revocations on exit: %r" % [(r["endpoint"], r["status"]) for r in st["revocations"]]
        assert revs["epc.revoke"]["token"] == toks["epc"] and revs["epc.revoke"]["status"] == 204
        [r] = reqs(st, "epc.revoke")
        assert r["status"] == 204 and (hget(r["headers"], "authorization") or "").startswith(
            "Basic "), "EPC revocation: %s %s" % (r["status"], r["error"])
        assert revs["eptura.revoke"]["token"] == toks["eptura"], "Eptura x-token %r" % revs[
            "eptura.revoke"]["token"][:8]
        for n in ("epc", "eptura"):
            assert s.m.api_get("/x", toks[n])[0] == 401, "%s token still alive" % n
        assert s.m.api_get("/x", toks["keep"])[0] == 200


def test_token_revocation_bounded_by_drain():
    # a revocation endpoint that never answers does not keep the proxy alive
    provs = lambda m: {"epc": epc(m, revoke_on_exit=True,  # noqa: E731
                                  revoke_url=m.url("/oauth2/v1/token/revocation"))}
    with Stack(provs, settings={"fail": {"epc.revoke": "hang"}},
               limits={"drain_ms": 1000}) as s:
        s.ok("epc")
        t0 = time.monotonic()
        rc = s.px.stop(term_wait=10)
        dt = time.monotonic() - t0
        assert rc == 0, "exit status %r" % rc
        assert dt < 4, "a hanging revocation kept the proxy %.1f s (drain_ms 1000)" % dt
        assert hits(s.m.stats(), "epc.revoke") == 1


def test_token_admin_endpoints():
    provs = lambda m: {"epc": epc(m), "bad": rfc(m, "/rfc/bad/token")}  # noqa: E731
    with Stack(provs, admin=True) as s:
        st_, _, body = s.admin_req("GET", "/tokens")
        assert st_ == 200, st_
        t = json.loads(body)
        assert set(t) >= {"epc", "bad"}, t
        assert s.admin_req("GET", "/readyz")[0] == 200, "not ready with no provider failed"
        for i in range(3):
            t1 = upstream_token(s.ok("epc"))
        st_, _, body = s.admin_req("GET", "/tokens")
        t = json.loads(body)["epc"]
        assert t1 not in body.decode(), "/tokens shows the token"
        assert t.get("state") and t.get("expires_at") is not None, t
        assert t.get("uses", 0) >= 3, "uses %r after 3 requests" % t.get("uses")
        assert t.get("age") is not None and 0 <= t["age"] < 30, "age %r" % t.get("age")
        # a forced mint: answered once the new token is cached
        st_, _, body = s.admin_req("POST", "/tokens/epc/refresh")
        assert st_ == 200, "POST /tokens/epc/refresh -> %d %r" % (st_, body)
        assert json.loads(body) == {"status": "minted", "provider": "epc"}, body
        assert hits(s.m.stats(), "epc.token") == 2, "the forced refresh answered before minting"
        t = json.loads(s.admin_req("GET", "/tokens")[2])["epc"]
        assert t["uses"] == 0 and t["state"] == "valid", "after a forced mint: %r" % t
        t2 = upstream_token(s.ok("epc"))
        assert t2 != t1 and t2 == s.m.stats()["issued"]["access_tokens"][-1], \
            "the forced mint's token is not used"
        assert s.admin_req("POST", "/tokens/nope/refresh")[0] == 404
        # a failing provider: not ready, last error shown; ready again after recovery
        s.m.control(fail={"rfc/bad": "500"})
        assert_error(s.get("bad"), 503, "token_unavailable")
        assert s.admin_req("GET", "/readyz")[0] == 503, "ready while a provider has failed"
        bad = json.loads(s.admin_req("GET", "/tokens")[2])["bad"]
        assert bad.get("last_error"), "/tokens shows no last error: %r" % bad
        # a forced mint that fails answers with the mint's error
        st_, hdrs, body = s.admin_req("POST", "/tokens/bad/refresh")
        assert st_ == 503 and json.loads(body)["error"] == "token_unavailable" and \
            json.loads(body).get("provider") == "bad", (st_, body)
        s.m.heal()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            s.admin_req("POST", "/tokens/bad/refresh")
            time.sleep(0.2)
            if s.admin_req("GET", "/readyz")[0] == 200:
                break
        assert s.admin_req("GET", "/readyz")[0] == 200, "not ready after the provider recovered"
        # metrics: mints, cache hits, 401 retries
        s.m.revoke_all()
        s.ok("epc")
        text = s.admin_req("GET", "/metrics")[2].decode()
        mints = _metric(text, "mint", 'provider="epc"')
        assert mints is not None and mints >= 3, "epc mints in /metrics: %r" % mints
        hits_ = _metric(text, "hit", 'provider="epc"')
        assert hits_ is not None and hits_ >= 2, "epc cache hits in /metrics: %r" % hits_
        retries = _metric(text, "401", "")
        assert retries is not None and retries >= 1, "401 retries in /metrics: %r" % retries
        for tok in s.m.stats()["issued"]["access_tokens"]:
            assert tok not in text


def test_admin_refresh_waits_and_survives_callers_that_leave():
    # forced mints take 0.5 s: two callers wait for the same mint (one transfer), a third hangs
    # up while waiting; all of it leaves the proxy serving, and the next refresh works
    with Stack(lambda m: {"epc": epc(m)}, settings={"delay_s": {"epc": 0.5}}, admin=True) as s:
        s.ok("epc")
        gone = socket.create_connection(("127.0.0.1", s.admin), timeout=5)
        gone.sendall(b"POST /tokens/epc/refresh HTTP/1.1\r\nHost: a\r\n"
                     b"Content-Length: 0\r\n\r\n")
        results = []
        ts = [threading.Thread(target=lambda: results.append(
            s.admin_req("POST", "/tokens/epc/refresh"))) for _ in range(2)]
        for t in ts:
            t.start()
        time.sleep(0.1)
        gone.close()
        for t in ts:
            t.join(10)
        assert [r[0] for r in results] == [200, 200], results
        assert hits(s.m.stats(), "epc.token") == 2, "the waiting callers did not share one mint"
        assert s.admin_req("POST", "/tokens/epc/refresh")[0] == 200
        assert hits(s.m.stats(), "epc.token") == 3
        s.ok("epc")
        assert s.px.alive()


def test_admin_health_and_metrics_count_proxied_requests_only():
    with Stack(lambda m: {"epc": epc(m)}, admin=True) as s:
        assert s.admin_req("GET", "/healthz")[::2] == (200, b"ok")
        assert s.admin_req("GET", "/readyz")[::2] == (200, b"ready")
        for _ in range(3):
            s.ok("epc")
        st_, _, body = s.get("nope")  # no route: 403, counted as 4xx
        assert st_ == 403, (st_, body)
        for path in ("/healthz", "/readyz", "/tokens", "/metrics", "/nothing-here"):
            s.admin_req("GET", path)
        held = socket.create_connection(("127.0.0.1", s.px.port), timeout=5)
        try:
            deadline = time.monotonic() + 5
            while True:  # the held connection is accepted: counted once, admin ones never
                text = s.admin_req("GET", "/metrics")[2].decode()
                open_ = _metric(text, "open_connections", "")
                if open_ == 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert open_ == 1, "open connections %r with one client connection held" % open_
        finally:
            held.close()
        assert _metric(text, "authproxy_requests_total", 'class="2xx"') == 3, \
            "2xx requests in /metrics: %r (admin requests counted?)" % (
                _metric(text, "authproxy_requests_total", 'class="2xx"'))
        assert _metric(text, "authproxy_requests_total", 'class="4xx"') == 1
        assert _metric(text, "upstream_latency_seconds_count", "") == 3, text
        assert _metric(text, "route_requests_total", 'class="2xx"') == 3, text


def test_token_endpoint_connections_reused():
    with Stack(lambda m: {"epc": epc(m)}, admin=True) as s:
        s.ok("epc")
        for i in range(3):
            s.admin_req("POST", "/tokens/epc/refresh")
            deadline = time.monotonic() + 5
            while hits(s.m.stats(), "epc.token") < i + 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        st = s.m.stats()
        assert hits(st, "epc.token") == 4, st["hits"]
        assert st["connections"]["provider"] == 1, \
            "%d TLS connections to the token endpoint for 4 sequential mints (not reused)" % (
                st["connections"]["provider"])


def test_token_secrets_never_leak():
    """Every secret, password, code, refresh token and access token the mocks issued is looked
    for in the proxy's log (debug), --check and --token stderr, error bodies, every response
    header, /tokens and /metrics."""
    seen = []
    secret_file = os.path.join(logdir(), "enable_secret")
    wrong = "wrongSecret" + os.urandom(8).hex() + "+&="

    def provs(m):
        with open(secret_file, "w") as f:
            f.write(m.creds["enable"]["client_secret"] + "\n")
        en = enable(m, client_secret_file=secret_file)
        del en["client_secret"]
        return {
            "epc": epc(m, revoke_on_exit=True, revoke_url=m.url("/oauth2/v1/token/revocation")),
            "eptura": eptura(m, revoke_on_exit=True, refresh_before_s=0),
            "enable": en,
            "rfcbody": rfc(m, "/rfc/rfcbody/token", client_auth="body"),
            "wrong": epc(m, client_secret="${WRONG_SECRET}"),
            "scope": enable(m, scope="read:deals admin:all"),
            "down": rfc(m, "/rfc/down/token"),
            "rt": rfc(m, "/rfc/rt/token", grant_type="refresh_token",
                      refresh_token="${RFC_REFRESH_TOKEN}"),
        }

    with Stack(provs, admin=True, log_level="debug",
               env={"WRONG_SECRET": wrong},
               settings={"fail": {"rfc/down": "500"}, "lifetime_s": {"eptura": 1}}) as s:
        r = run_cli(["-c", s.px.cfg_path, "--check"], env=s.env())
        seen += [("--check stdout", r.stdout), ("--check stderr", r.stderr)]
        r = run_cli(["-c", s.px.cfg_path, "--token", "rfcbody"], env=s.env())
        assert r.returncode == 0, "--token rfcbody: %s" % r.stderr[-300:]
        seen.append(("--token stderr", r.stderr))

        def through(name, **kw):
            st_, hdrs, body = s.req(name, headers={"Authorization": "Bearer client-own"}, **kw)
            seen.append(("%s response headers" % name, repr(hdrs)))
            if st_ != 200:  # a 200's body is the upstream's echo, which shows the token
                seen.append(("%s response body" % name, body.decode("utf-8", "replace")))
            return st_

        for name in ("epc", "eptura", "enable", "rfcbody", "rt"):
            assert through(name) == 200, name
        for name, want in (("wrong", 502), ("scope", 502), ("down", 503)):
            assert through(name) == want, name
        s.m.revoke_all()
        for name in ("epc", "enable", "rfcbody"):
            assert through(name, method="POST", body=b"payload") == 200  # 401 replay
        time.sleep(1.2)
        assert through("eptura") == 200  # the refresh grant
        s.admin_req("POST", "/tokens/rt/refresh")
        time.sleep(0.3)
        for path in ("/tokens", "/metrics", "/readyz"):
            seen.append((path, s.admin_req("GET", path)[2].decode("utf-8", "replace")))
        rc = s.px.stop()
        assert rc == 0, rc
        seen.append(("proxy output", s.px.output()))
        st = s.m.stats()
        # the scenario did what it is meant to
        assert len(st["issued"]["codes"]) >= 1 and len(st["issued"]["refresh_tokens"]) >= 3, \
            st["minted"]
        assert st["minted"].get("eptura", {}).get("refresh_token", 0) >= 1, st["minted"]
        assert len(st["revocations"]) >= 2, st["revocations"]
        leaks = s.m.secrets() + [("wrong secret", wrong), ("wrong secret", wrong[:20])]
        for what, text in seen:
            for label, value in leaks:
                assert value not in text, "%s appears in %s" % (label, what)


def test_token_sighup_keeps_unchanged_providers_tokens():
    provs = lambda m: {"a": rfc(m, "/rfc/a/token"), "b": rfc(m, "/rfc/b/token")}  # noqa: E731
    with Stack(provs) as s:
        ta, tb = upstream_token(s.ok("a")), upstream_token(s.ok("b"))

        def reload(cfg, n):
            with open(s.px.cfg_path, "w") as f:
                json.dump(cfg, f)
            os.kill(s.px.pid, signal.SIGHUP)
            deadline = time.monotonic() + 5
            while s.px.output().count("reloaded") < n and time.monotonic() < deadline:
                time.sleep(0.05)
            assert s.px.output().count("reloaded") >= n, "no reload logged after SIGHUP"

        reload(s.cfg, 1)
        assert upstream_token(s.ok("a")) == ta and upstream_token(s.ok("b")) == tb, \
            "an unchanged configuration lost its tokens on SIGHUP"
        cfg = json.loads(json.dumps(s.cfg))
        cfg["providers"]["b"]["scope"] = "changed"
        reload(cfg, 2)
        assert upstream_token(s.ok("a")) == ta, "provider a (unchanged) lost its token"
        tb2 = upstream_token(s.ok("b"))
        assert tb2 != tb, "provider b's settings changed but its old token is still used"
        st = s.m.stats()
        assert hits(st, "rfc/a.token") == 1 and hits(st, "rfc/b.token") == 2, st["hits"]
        assert form(reqs(st, "rfc/b.token")[-1]["body"]).get("scope") == "changed"
