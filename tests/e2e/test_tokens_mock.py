"""The mock providers themselves behave as the documents in shared/seeds/ say (no proxy
involved): so that a failing token test points at authproxy, not at the mock."""
import base64
import json
import time
from urllib.parse import quote_plus

from tokenkit import MockProviders, hget, hits

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSONCT = {"Content-Type": "application/json"}


def _basic(cid, sec):
    return "Basic " + base64.b64encode(("%s:%s" % (cid, sec)).encode()).decode()


def _q(**kw):
    return "&".join("%s=%s" % (k, quote_plus(v)) for k, v in kw.items())


def test_tokens_mock_epc_document():
    with MockProviders() as m:
        c = m.creds["epc"]
        # 001: Basic auth, 201, expires_in 7200
        st, h, obj = m.post("/oauth2/v1/token", dict(FORM, Authorization=_basic(
            c["client_id"], c["client_secret"])), "grant_type=client_credentials&scope=pc+pcapi")
        assert st == 201, (st, obj)
        assert obj["token_type"] == "Bearer" and obj["expires_in"] == 7200, obj
        tok = obj["access_token"]
        # 000: credentials in the form body also work
        st, _, obj2 = m.post("/oauth2/v1/token", FORM, _q(
            grant_type="client_credentials", client_id=c["client_id"],
            client_secret=c["client_secret"], scope="pc pcapi"))
        assert st == 201, (st, obj2)
        # both at once, wrong secret, wrong scope, query parameters, x- header, JSON body
        bad = [
            (dict(FORM, Authorization=_basic(c["client_id"], c["client_secret"])),
             _q(grant_type="client_credentials", client_secret=c["client_secret"],
                scope="pc pcapi"), 400, "invalid_request"),
            (dict(FORM, Authorization=_basic(c["client_id"], "nope")),
             "grant_type=client_credentials&scope=pc+pcapi", 401, "invalid_client"),
            (FORM, _q(grant_type="client_credentials", client_id=c["client_id"],
                      client_secret="nope", scope="pc pcapi"), 400, "invalid_client"),
            (dict(FORM, Authorization=_basic(c["client_id"], c["client_secret"])),
             "grant_type=client_credentials&scope=pc", 400, "invalid_scope"),
            (dict(FORM, Authorization=_basic(c["client_id"], c["client_secret"]),
                  **{"x-grant-type": "client_credentials"}), "scope=pc+pcapi", 400,
             "invalid_request"),
            (dict(JSONCT, Authorization=_basic(c["client_id"], c["client_secret"])),
             json.dumps({"grant_type": "client_credentials", "scope": "pc pcapi"}), 400,
             "invalid_request"),
        ]
        for headers, body, status, err in bad:
            st, _, obj = m.post("/oauth2/v1/token", headers, body)
            assert (st, obj.get("error")) == (status, err), (headers, body, st, obj)
        st, _, obj = m.post("/oauth2/v1/token?grant_type=client_credentials&scope=pc+pcapi",
                            dict(FORM, Authorization=_basic(c["client_id"], c["client_secret"])))
        assert st == 400 and obj["error"] == "invalid_request", (st, obj)
        # introspection and the API
        st, _, obj = m.post("/oauth2/v1/token/introspection",
                            dict(FORM, Authorization=_basic(c["client_id"], c["client_secret"])),
                            "token=" + tok)
        assert st == 200 and obj["active"] is True and obj["scope"] == "pc pcapi", obj
        st, h, body = m.api_get("/v1/loans", tok)
        assert st == 200 and json.loads(body)["token_key"] == "epc", (st, body)
        # idle expiry (sliding) and revocation (204)
        m.control(idle_s={"epc": 0.5})
        st, _, obj = m.post("/oauth2/v1/token", dict(FORM, Authorization=_basic(
            c["client_id"], c["client_secret"])), "grant_type=client_credentials&scope=pc+pcapi")
        t2 = obj["access_token"]
        for _ in range(3):
            time.sleep(0.25)
            assert m.api_get("/x", t2)[0] == 200, "a used token expired while in use"
        time.sleep(0.65)
        st, h, body = m.api_get("/x", t2)
        assert st == 401 and hget(h, "www-authenticate") == 'Bearer error="invalid_token"', \
            (st, h)
        st, h, _ = m.post("/oauth2/v1/token/revocation",
                          dict(FORM, Authorization=_basic(c["client_id"], c["client_secret"])),
                          "token=" + tok)
        assert st == 204, st
        assert m.api_get("/x", tok)[0] == 401, "a revoked token still works"
        # EPC takes Basic raw (curl -u), not url-encoded
        sec = "kFynI!h@Da13Kt^UH3mK+g%/="
        m.control(credentials={"epc": {"client_secret": sec}})
        ok = m.post("/oauth2/v1/token", dict(FORM, Authorization=_basic(c["client_id"], sec)),
                    "grant_type=client_credentials&scope=pc+pcapi")
        enc = m.post("/oauth2/v1/token", dict(FORM, Authorization=_basic(
            c["client_id"], quote_plus(sec))), "grant_type=client_credentials&scope=pc+pcapi")
        assert ok[0] == 201 and enc[0] == 401, (ok[0], enc[0], enc[2])
        s = m.stats()
        assert hits(s, "epc.token") == 12 and s["minted"]["epc"]["client_credentials"] == 4, s


def test_tokens_mock_eptura_document():
    with MockProviders() as m:
        c = m.creds["eptura"]
        base = {"Content-Type": "application/json", "x-client-id": c["client_id"],
                "x-redirect-uri": c["redirect_uri"], "x-scope": c["scope"]}

        def code():
            st, _, obj = m.post("/external/api/oauth2/auth", dict(
                base, **{"x-auth-username": c["username"], "x-auth-password": c["password"]}))
            assert st == 200 and set(obj) == {"code"}, (st, obj)
            return obj["code"]

        def tok(extra):
            return m.post("/external/api/oauth2/token", dict(base, **extra))

        st, _, obj = m.post("/external/api/oauth2/auth", dict(
            base, **{"x-auth-username": c["username"], "x-auth-password": "wrong"}))
        assert st == 400 and obj["error"] == "invalid_grant", (st, obj)
        cd = code()
        st, _, obj = tok({"x-grant-type": "authorization_code", "x-auth-code": cd})
        assert st == 200, (st, obj)
        assert set(obj) == {"token_type", "access_token", "expires_in", "refresh_token"}, obj
        assert obj["expires_in"] == 3600 * 1000, "expires_in is not in milliseconds: %r" % obj
        # the code is single-use
        st, _, o2 = tok({"x-grant-type": "authorization_code", "x-auth-code": cd})
        assert st == 400 and o2["error"] == "invalid_grant", (st, o2)
        # refresh rotates
        rt1 = obj["refresh_token"]
        st, _, r1 = tok({"x-grant-type": "refresh_token", "x-refresh-token": rt1})
        assert st == 200 and r1["refresh_token"] != rt1, (st, r1)
        st, _, r2 = tok({"x-grant-type": "refresh_token", "x-refresh-token": rt1})
        assert st == 400 and r2["error"] == "invalid_grant", "an old refresh token was reused"
        # parameters in a form body instead of headers; refresh switched off; code expiry
        st, _, o3 = m.post("/external/api/oauth2/token", {"Content-Type": "application/json"},
                           json.dumps({"grant_type": "refresh_token",
                                       "refresh_token": r1["refresh_token"]}))
        assert st == 400 and o3["error"] == "invalid_request", (st, o3)
        m.control(refresh="fail")
        st, _, o4 = tok({"x-grant-type": "refresh_token", "x-refresh-token": r1["refresh_token"]})
        assert st == 400 and o4["error"] == "invalid_grant", (st, o4)
        m.control(code_ttl_s=0.3)
        cd = code()
        time.sleep(0.5)
        st, _, o5 = tok({"x-grant-type": "authorization_code", "x-auth-code": cd})
        assert st == 400 and "expired" in o5["error_description"], (st, o5)
        # milliseconds: 700 ms tokens
        m.control(lifetime_s={"eptura": 0.7}, code_ttl_s=300)
        st, _, o6 = tok({"x-grant-type": "authorization_code", "x-auth-code": code()})
        assert o6["expires_in"] == 700, o6
        assert m.api_get("/x", o6["access_token"])[0] == 200
        time.sleep(0.9)
        assert m.api_get("/x", o6["access_token"])[0] == 401
        st, _, _ = m.post("/external/api/oauth2/revoke", {"x-token": obj["access_token"]})
        assert st == 200 and m.api_get("/x", obj["access_token"])[0] == 401


def test_tokens_mock_enable_rfc_and_failures():
    with MockProviders() as m:
        c = m.creds["enable"]
        good = dict(grant_type="client_credentials", client_id=c["client_id"],
                    client_secret=c["client_secret"],
                    dealtrack_registration_id=c["registration_id"], scope="read:deals read:users")
        st, _, obj = m.post("/connect/token", FORM, _q(**good))
        assert st == 200 and obj["token_type"] == "Bearer", (st, obj)
        p = obj["access_token"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
        assert abs(claims["exp"] - time.time() - 3600) < 5, claims
        st, _, obj = m.post("/connect/token", FORM, _q(**dict(good, scope="read:deals write:x")))
        assert st == 400 and obj["error"] == "invalid_scope", (st, obj)
        no_reg = dict(good)
        del no_reg["dealtrack_registration_id"]
        st, _, obj = m.post("/connect/token", FORM, _q(**no_reg))
        assert st == 400 and obj["error"] == "invalid_request", (st, obj)
        m.control(omit_expires_in={"enable": True})
        st, _, obj = m.post("/connect/token", FORM, _q(**good))
        assert st == 200 and "expires_in" not in obj, obj
        # generic: failure modes are per key
        tok = m.mint_direct()
        assert m.api_get("/x", tok)[0] == 200
        m.control(fail={"rfc/a": "500", "rfc/b": "big", "rfc/c": "429"}, retry_after=7)
        r = m.creds["rfc"]
        body = _q(grant_type="client_credentials", client_id=r["client_id"],
                  client_secret=r["client_secret"])
        assert m.post("/rfc/a/token", FORM, body)[0] == 500
        st, _, obj = m.post("/rfc/b/token", FORM, body)
        assert st == 200 and len(json.dumps(obj)) > (2 << 20), st
        st, h, _ = m.post("/rfc/c/token", FORM, body)
        assert st == 429 and hget(h, "retry-after") == "7", (st, h)
        assert m.post("/rfc/token", FORM, body)[0] == 200
        m.heal()
        assert m.post("/rfc/a/token", FORM, body)[0] == 200
        st, _, obj = m.post("/rfc-json/j/token", JSONCT, json.dumps(
            {"grant_type": "client_credentials", "client_id": r["client_id"],
             "client_secret": r["client_secret"]}))
        assert st == 200, (st, obj)
        st, _, obj = m.post("/rfc-headers/h/token", {"x-grant-type": "client_credentials",
                                                     "x-client-id": r["client_id"],
                                                     "x-client-secret": r["client_secret"]})
        assert st == 200, (st, obj)
        m.revoke_all()
        assert m.api_get("/x", tok)[0] == 401
        m.control(api_reject=True)
        assert m.api_get("/public/x")[0] == 200
        s = m.stats()
        assert s["api"]["unauthorized"] >= 1 and hits(s, "rfc/a.token") == 2, s["hits"]
        st, _, obj = m._call("POST", "/__control", {"nonsense": 1})
        assert st == 400, "the control interface accepts unknown fields"
