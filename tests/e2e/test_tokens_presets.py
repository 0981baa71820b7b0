"""Token injection through each preset, as its provider's document says; expiry rules
(JWT exp, milliseconds, idle, lifetime cap); Eptura's refresh-token rotation and fallback."""
import base64
import json
import time
from urllib.parse import unquote_plus

from tokenkit import (Stack, enable, epc, eptura, form, hget, hits, reqs, rfc,
                      upstream_token)


def _basic_pair(value, decode=True):
    """[id, secret] of a Basic header; url-decoded (RFC 6749 2.3.1) unless decode is False."""
    assert value and value.startswith("Basic "), "no Basic client authentication: %r" % value
    pair = base64.b64decode(value[6:]).decode().split(":", 1)
    return [unquote_plus(x) for x in pair] if decode else pair

# like the secret in 000's example header (a5dqrhc:kFynI!h@Da13Kt^UH3mK...)
DOC_STYLE_SECRET = "kFynI!h@Da13Kt^UH3mKgDg+C9%0yh/af=gi!d&iy5$Lk9#"


def test_token_epc_basic_injection():
    with Stack(lambda m: {"epc": epc(m)}) as s:
        echo = s.ok("epc", headers={"Authorization": "Bearer the-clients-own"})
        st = s.m.stats()
        assert st["issued"]["access_tokens"] == [upstream_token(echo)], \
            "the upstream did not get the token the mock issued"
        assert echo["token_key"] == "epc"
        [r] = reqs(st, "epc.token")
        assert r["status"] == 201 and r["method"] == "POST", r
        assert r["target"] == "/oauth2/v1/token", r
        cid, sec = _basic_pair(hget(r["headers"], "authorization"))
        c = st["credentials"]["epc"]
        assert cid == c["client_id"], "Basic user %r" % cid
        f = form(r["body"])
        assert f.get("grant_type") == "client_credentials" and f.get("scope") == "pc pcapi", f
        assert "client_secret" not in f, "the secret travelled in the body as well as Basic"


def test_token_epc_form_client_auth():
    # 000: client_id and client_secret in the form body (client_auth body)
    with Stack(lambda m: {"epc": epc(m, client_auth="body")}) as s:
        echo = s.ok("epc")
        st = s.m.stats()
        [r] = reqs(st, "epc.token")
        assert r["status"] == 201, r
        assert hget(r["headers"], "authorization") is None, "Basic sent with client_auth body"
        f = form(r["body"])
        c = st["credentials"]["epc"]
        assert f == {"grant_type": "client_credentials", "client_id": c["client_id"],
                     "client_secret": c["client_secret"], "scope": "pc pcapi"}, \
            "form body %r" % r["body"]
        assert upstream_token(echo) == st["issued"]["access_tokens"][0]


def test_token_epc_secret_with_special_characters():
    # EPC's documents send Basic exactly as curl -u 'id:secret' does: the secret raw. A
    # url-encoded secret (RFC 6749 2.3.1) is not what EPC documents (000's example header
    # decodes to a raw "kFynI!h@Da13Kt^..."). In the form body it must be form-encoded.
    for auth in ("basic", "body"):
        with Stack(lambda m: {"epc": epc(m, client_auth=auth)},
                   settings={"credentials": {"epc": {"client_secret": DOC_STYLE_SECRET}}}) as s:
            st_, _, body = s.get("epc")
            st = s.m.stats()
            [r] = reqs(st, "epc.token")
            if auth == "basic":
                raw = _basic_pair(hget(r["headers"], "authorization"), decode=False)
                assert raw[1] == DOC_STYLE_SECRET, \
                    "EPC Basic secret sent as %r, EPC's documents send it raw (curl -u): %r" \
                    % (raw[1], DOC_STYLE_SECRET)
            else:
                assert form(r["body"]).get("client_secret") == DOC_STYLE_SECRET, \
                    "form-encoded secret decodes to %r" % form(r["body"]).get("client_secret")
            assert st_ == 200 and r["status"] == 201, "client_auth %s: %d %r / mock %s %s" % (
                auth, st_, body[:200], r["status"], r["error"])


def test_token_eptura_injection():
    def routes(m, providers):
        return [{"path_prefix": "/eptura/", "strip_prefix": True, "upstream": m.api,
                 "provider": "eptura"}]

    with Stack(lambda m: {"eptura": eptura(m)}, routes=routes) as s:
        from harness import request
        st_, hdrs, body = request(s.px.port, "GET", "/eptura/external/api/rest/v2/users/me",
                                  timeout=15)
        assert st_ == 200, "gateway request -> %d %r" % (st_, body[:400])
        echo = json.loads(body)
        assert echo["path"] == "/external/api/rest/v2/users/me", echo["path"]
        st = s.m.stats()
        c = st["credentials"]["eptura"]
        [a] = reqs(st, "eptura.auth")
        assert a["status"] == 200, a
        for name, want in (("x-auth-username", c["username"]), ("x-auth-password", c["password"]),
                           ("x-client-id", c["client_id"]), ("x-redirect-uri", c["redirect_uri"]),
                           ("x-scope", c["scope"])):
            assert hget(a["headers"], name) == want, "code request %s = %r" % (
                name, hget(a["headers"], name))
        [t] = reqs(st, "eptura.token")
        assert t["status"] == 200 and t["grant"] == "authorization_code", t
        assert hget(t["headers"], "x-auth-code") == st["issued"]["codes"][0]
        assert (hget(t["headers"], "content-type") or "").startswith("application/json")
        assert upstream_token(echo) == st["issued"]["access_tokens"][0]


def test_token_enable_injection():
    with Stack(lambda m: {"enable": enable(m)}) as s:
        echo = s.ok("enable")
        st = s.m.stats()
        [r] = reqs(st, "enable.token")
        assert r["status"] == 200, r
        c = st["credentials"]["enable"]
        f = form(r["body"])
        assert f == {"grant_type": "client_credentials", "client_id": c["client_id"],
                     "client_secret": c["client_secret"],
                     "dealtrack_registration_id": c["registration_id"],
                     "scope": "read:deals read:users"}, "form body %r" % r["body"]
        tok = upstream_token(echo)
        assert tok == st["issued"]["access_tokens"][0] and tok.count(".") == 2, tok


def test_token_enable_jwt_exp_without_expires_in():
    # no expires_in: the JWT's exp (2-3 s ahead) is the expiry, not default_ttl_s (1 h)
    with Stack(lambda m: {"enable": enable(m, default_ttl_s=3600, refresh_before_s=0)},
               settings={"omit_expires_in": {"enable": True},
                         "lifetime_s": {"enable": 3}}) as s:
        t1 = upstream_token(s.ok("enable"))
        t1b = upstream_token(s.ok("enable"))
        assert t1 == t1b, "a fresh JWT was not reused"
        p = t1.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))["exp"]
        time.sleep(max(0.0, exp - time.time()) + 0.5)
        t2 = upstream_token(s.ok("enable"))
        st = s.m.stats()
        assert t2 != t1, "the JWT was used past its exp"
        assert st["api"]["unauthorized"] == 0, \
            "the expired JWT was sent upstream (exp ignored; rescued only by the 401 replay)"
        assert hits(st, "enable.token") == 2


def test_token_rfc6749_client_auth_and_param_styles():
    hdr_names = {"grant_type": "x-grant-type", "client_id": "x-client-id",
                 "client_secret": "x-client-secret", "scope": "x-scope"}
    provs = lambda m: {  # noqa: E731
        "basic": rfc(m, "/rfc/basic/token", client_auth="basic", scope="read write",
                     params={"audience": "https://api.example"}),
        "body": rfc(m, "/rfc/body/token", client_auth="body"),
        "public": rfc(m, "/rfc/public/token", client_auth="none"),
        "json": rfc(m, "/rfc-json/json/token", client_auth="body", param_style="json"),
        "headers": rfc(m, "/rfc-headers/headers/token", client_auth="body",
                       param_style="headers", param_names=hdr_names, scope="s1"),
    }
    with Stack(provs, settings={"public": {"rfc/public": True}}) as s:
        for name in ("basic", "body", "public", "json", "headers"):
            st_, hdrs, body = s.get(name)
            assert st_ == 200, "%s: %d %r" % (name, st_, body[:400])
        st = s.m.stats()
        c = st["credentials"]["rfc"]
        [b] = reqs(st, "rfc/basic.token")
        assert _basic_pair(hget(b["headers"], "authorization")) == [c["client_id"],
                                                                    c["client_secret"]]
        f = form(b["body"])
        assert f == {"grant_type": "client_credentials", "scope": "read write",
                     "audience": "https://api.example"}, "basic: form %r" % b["body"]
        [b] = reqs(st, "rfc/body.token")
        assert hget(b["headers"], "authorization") is None
        assert form(b["body"]) == {"grant_type": "client_credentials", "client_id": c["client_id"],
                                   "client_secret": c["client_secret"]}, b["body"]
        [b] = reqs(st, "rfc/public.token")
        assert hget(b["headers"], "authorization") is None
        assert "client_secret" not in form(b["body"]), "client_auth none sent a secret"
        [b] = reqs(st, "rfc-json/json.token")
        assert json.loads(b["body"]) == {"grant_type": "client_credentials",
                                         "client_id": c["client_id"],
                                         "client_secret": c["client_secret"]}, b["body"]
        [b] = reqs(st, "rfc-headers/headers.token")
        assert hget(b["headers"], "x-client-secret") == c["client_secret"]
        assert hget(b["headers"], "x-scope") == "s1"
        assert all(r["status"] == 200 for r in st["requests"]), \
            [(r["endpoint"], r["status"], r["error"]) for r in st["requests"]]


def test_token_rfc6749_refresh_token_grant_rotates():
    # grant_type refresh_token: starts from the configured refresh token, then uses the
    # rotated one the response carries
    with Stack(lambda m: {"rt": rfc(m, "/rfc/rt/token", grant_type="refresh_token",
                                    refresh_token="${RFC_REFRESH_TOKEN}", refresh_before_s=0)},
               settings={"lifetime_s": {"rfc/rt": 1}}, admin=True) as s:
        t1 = upstream_token(s.ok("rt"))
        time.sleep(1.3)
        t2 = upstream_token(s.ok("rt"))
        st = s.m.stats()
        rs = reqs(st, "rfc/rt.token")
        assert [r["grant"] for r in rs] == ["refresh_token", "refresh_token"], \
            [(r["grant"], r["status"], r["error"]) for r in rs]
        assert rs[0]["presented"]["refresh_token"] == st["credentials"]["rfc"]["refresh_token"]
        assert rs[1]["presented"]["refresh_token"] == st["issued"]["refresh_tokens"][0], \
            "the rotated refresh token was not used (status %s %s)" % (rs[1]["status"],
                                                                      rs[1]["error"])
        assert t1 != t2 and st["api"]["unauthorized"] == 0


def test_token_client_credentials_refused_refresh_falls_back_to_a_new_grant():
    # a client_credentials server that also hands out refresh tokens, then refuses them: the
    # next mint is a fresh client_credentials grant, and so is every one after it (the refused
    # refresh token is dropped, not presented again)
    with Stack(lambda m: {"cc": rfc(m, "/rfc/cc/token", refresh_before_s=0)},
               settings={"lifetime_s": {"rfc/cc": 1}, "cc_refresh": {"rfc/cc": True}}) as s:
        t1 = upstream_token(s.ok("cc"))
        s.m.control(refresh="fail")
        toks = [t1]
        for _ in range(2):
            time.sleep(1.25)
            st_, _, body = s.get("cc")
            assert st_ == 200, "refresh refused: no new client_credentials grant: %d %r" % (
                st_, body[:300])
            toks.append(upstream_token(json.loads(body)))
        st = s.m.stats()
        ts = reqs(st, "rfc/cc.token")
        assert [(r["grant"], r["status"]) for r in ts] == [
            ("client_credentials", 200), ("refresh_token", 400), ("client_credentials", 200),
            ("refresh_token", 400), ("client_credentials", 200)], \
            [(r["grant"], r["status"], r["error"]) for r in ts]
        presented = [r["presented"].get("refresh_token") for r in ts
                     if r["grant"] == "refresh_token"]
        assert len(set(presented)) == 2, "a refused refresh token was presented again"
        assert len(set(toks)) == 3 and st["api"]["unauthorized"] == 0


def test_token_eptura_millisecond_expiry():
    # expires_in 1500 means 1.5 s, not 1500 s (nor 1.5 ms)
    with Stack(lambda m: {"eptura": eptura(m, refresh_before_s=0)},
               settings={"lifetime_s": {"eptura": 1.5}}) as s:
        t0 = time.monotonic()
        t1 = upstream_token(s.ok("eptura"))
        time.sleep(0.3)
        assert upstream_token(s.ok("eptura")) == t1, \
            "a 1500 ms token was replaced after 0.3 s (expires_in read as less than ms?)"
        time.sleep(max(0.0, 1.9 - (time.monotonic() - t0)))
        t2 = upstream_token(s.ok("eptura"))
        st = s.m.stats()
        assert t2 != t1, "a 1500 ms token was still used after 1.9 s"
        assert st["api"]["unauthorized"] == 0, \
            "the expired token was sent upstream (expires_in taken as seconds?)"


def test_token_eptura_refresh_rotation():
    with Stack(lambda m: {"eptura": eptura(m, refresh_before_s=0)},
               settings={"lifetime_s": {"eptura": 1.0}}) as s:
        toks = [upstream_token(s.ok("eptura"))]
        for _ in range(2):
            time.sleep(1.25)
            toks.append(upstream_token(s.ok("eptura")))
        st = s.m.stats()
        ts = reqs(st, "eptura.token")
        assert [(r["grant"], r["status"]) for r in ts] == [
            ("authorization_code", 200), ("refresh_token", 200), ("refresh_token", 200)], \
            [(r["grant"], r["status"], r["error"]) for r in ts]
        rts = st["issued"]["refresh_tokens"]
        assert [r["presented"]["refresh_token"] for r in ts[1:]] == rts[:2], \
            "each refresh must present the newest refresh token"
        assert hits(st, "eptura.auth") == 1, "a new code was requested although refresh worked"
        assert len(set(toks)) == 3 and st["api"]["unauthorized"] == 0


def test_token_eptura_refresh_refused_or_failing_falls_back_to_code():
    # SPEC: "fall back to a new code when refresh fails": a refusal (400 invalid_grant) and a
    # 500 alike
    for mode, status in (("fail", 400), ("500", 500)):
        with Stack(lambda m: {"eptura": eptura(m, refresh_before_s=0)},
                   settings={"lifetime_s": {"eptura": 1.0}}) as s:
            t1 = upstream_token(s.ok("eptura"))
            s.m.control(refresh=mode)
            time.sleep(1.25)
            st_, _, body = s.get("eptura")
            assert st_ == 200, "refresh answered %d: no fallback to a new code: %d %r" % (
                status, st_, body[:300])
            t2 = upstream_token(json.loads(body))
            st = s.m.stats()
            ts = reqs(st, "eptura.token")
            assert [(r["grant"], r["status"]) for r in ts] == [
                ("authorization_code", 200), ("refresh_token", status),
                ("authorization_code", 200)], [(r["grant"], r["status"], r["error"]) for r in ts]
            assert hits(st, "eptura.auth") == 2 and t2 != t1 and st["api"]["unauthorized"] == 0


def test_token_epc_idle_expiry():
    # EPC tokens die after idle_s without use; each use extends it (mock 2.3 s, proxy 2 s:
    # uses 0.5 s apart keep it alive even if the proxy keeps a safety margin of up to 1 s)
    with Stack(lambda m: {"epc": epc(m, idle_timeout_s=2, refresh_before_s=0)},
               settings={"idle_s": {"epc": 2.3}}) as s:
        t1 = upstream_token(s.ok("epc"))
        for _ in range(5):  # 2.5 s of use, 0.5 s apart: the token slides
            time.sleep(0.5)
            assert upstream_token(s.ok("epc")) == t1, "a token in steady use was replaced"
        time.sleep(2.5)
        t2 = upstream_token(s.ok("epc"))
        st = s.m.stats()
        assert t2 != t1 and hits(st, "epc.token") == 2, hits(st, "epc.token")
        assert st["api"]["unauthorized"] == 0, \
            "an idle-expired token was sent upstream (idle_timeout_s not applied)"


def test_token_epc_max_lifetime_cap():
    # the response says 7200 s, the provider kills tokens at 1.5 s: max_lifetime_s 1 wins
    with Stack(lambda m: {"epc": epc(m, max_lifetime_s=1, refresh_before_s=0)},
               settings={"lifetime_s": {"epc": 1.5}, "expires_in": {"epc": 7200}}) as s:
        t0 = time.monotonic()
        t1 = upstream_token(s.ok("epc"))
        time.sleep(0.3)
        assert upstream_token(s.ok("epc")) == t1, "a 1 s token was replaced after 0.3 s"
        time.sleep(max(0.0, 1.7 - (time.monotonic() - t0)))
        t2 = upstream_token(s.ok("epc"))
        st = s.m.stats()
        assert t2 != t1 and st["api"]["unauthorized"] == 0, \
            "a token older than max_lifetime_s was sent upstream"
