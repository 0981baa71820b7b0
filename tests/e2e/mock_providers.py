#!/usr/bin/env python3
"""Mock OAuth 2.0 token providers and a mock API for the authproxy token tests (stdlib only).

    python3 mock_providers.py [--port N] [--api-port M] [--tls CERT KEY]

Prints "PORT <provider port> API <api port>" on stdout once both listen, then nothing else.
One thread per connection, HTTP/1.1 keep-alive, our own minimal parsing. Both ports serve
/__control and /__stats. Credentials are random per process (with characters that need
encoding: + & = % / : ! ...) and are published in GET /__stats "credentials".

Providers, each as its document in shared/seeds/ says (and strict about where parameters go):

  EPC (000, 001)   POST /oauth2/v1/token               form body, grant_type=client_credentials,
                                                        scope "pc pcapi"; client auth HTTP Basic
                                                        OR client_id+client_secret in the form
                                                        (both at once: 400) -> 201 {access_token,
                                                        token_type Bearer, expires_in 7200}.
                                                        Tokens die after idle_s without API use
                                                        (default 900, sliding) or lifetime_s
                                                        (default 7200), whichever first.
                   POST /oauth2/v1/token/introspection Basic, form token= -> {active, ...}
                   POST /oauth2/v1/token/revocation    Basic, form token= -> 204
  Eptura (002)     POST /external/api/oauth2/auth      headers x-auth-username, x-auth-password,
                                                        x-client-id, x-redirect-uri, x-scope,
                                                        Content-Type application/json -> {code}
                                                        (single use, dies after code_ttl_s = 300)
                   POST /external/api/oauth2/token     every parameter in x- headers:
                                                        x-grant-type authorization_code +
                                                        x-auth-code, or refresh_token +
                                                        x-refresh-token; x-client-id,
                                                        x-redirect-uri, x-scope (same as the
                                                        code's) -> {token_type, access_token,
                                                        expires_in IN MILLISECONDS, refresh_token};
                                                        refresh tokens rotate (a used one is dead)
                   POST /external/api/oauth2/revoke    header x-token -> 200 {}
  Enable (003)     POST /connect/token                 form: grant_type=client_credentials,
                                                        client_id, client_secret,
                                                        dealtrack_registration_id, scope (space-
                                                        delimited, each in the allowed "scopes",
                                                        else 400 invalid_scope); a Basic header is
                                                        the wrong place (400) -> {access_token:
                                                        a JWT whose payload has exp, token_type,
                                                        expires_in (unless omit_expires_in)}
  RFC 6749         POST /rfc[/NAME]/token              form (client_credentials or refresh_token
                                                        with rotation); Basic or body auth, or
                                                        none when public[key]; -> 200
                   POST /rfc-json[/NAME]/token         same, parameters as a JSON object body
                   POST /rfc-headers[/NAME]/token      same, parameters in headers x-grant-type,
                                                        x-client-id, x-client-secret, x-scope,
                                                        x-refresh-token (use param_names)
                   POST /rfc[/NAME]/revoke             RFC 7009 form token=, client auth -> 200
    The settings key of these is the path without "/token": "rfc", "rfc/NAME", "rfc-json/NAME".
  EPC takes Basic credentials raw, as its documents send them (curl -u); the generic endpoints
  take them raw or url-encoded (RFC 6749 2.3.1).
  Errors are RFC 6749 5.2 bodies {"error", "error_description"}; wrong client credentials give
  invalid_client (401 when Basic was used, else 400); a parameter in the wrong place (URL query,
  a header instead of the body, the body instead of headers, a wrong Content-Type) gives 400
  invalid_request.

Mock API (the API port): every path except /public/... needs "Authorization: Bearer <a live token
issued here>" (not revoked, not past its lifetime, not idle past idle_s; a valid use slides the
idle timer); otherwise 401 with `WWW-Authenticate: Bearer error="invalid_token"`. Answers the echo
JSON {method, target, path, headers, body_length, body_sha256, token_key}.

Control: POST /__control with a JSON object of any of these fields (unknown fields: 400):
  lifetime_s {key: s}       real lifetime of tokens issued from now on (EPC: the 2-hour cap);
                            expires_in reports it (in ms for eptura); default 3600, epc 7200
  idle_s {key: s|null}      idle expiry of tokens issued from now on (default epc 900, others none)
  expires_in {key: v|null}  report this raw expires_in instead (the real lifetime is unchanged)
  omit_expires_in {key: b}  leave expires_in out (enable: the JWT exp is the only expiry)
  fail {key[.endpoint]: mode|null}   key alone = its token endpoint; endpoints: token, auth,
                            revoke, introspect. modes: 500, hang (no answer until heal), garbage
                            (200 non-JSON), 429 / 503 (with Retry-After), drop (close), big (a
                            2 MiB valid token response), expires_zero, expires_negative, mac
                            (token_type mac), bearer_lower (token_type "bearer"), no_access_token
  retry_after s             Retry-After of 429/503 (default 2)
  delay_s {key[.endpoint]: s}  sleep before answering
  code_ttl_s s              Eptura code lifetime (default 300)
  refresh "ok"|"fail"|"500" "fail": every refresh_token grant gets 400 invalid_grant; "500":
                            500 server_error
  scopes [..]               Enable's allowed scopes (default read:deals read:activitylogs
                            read:users)
  public {key: bool}        RFC endpoint without client authentication (client_auth none)
  cc_refresh {key: bool}    RFC endpoint: client_credentials answers carry a refresh_token too
                            (RFC 6749 4.4.3 says SHOULD NOT; some servers do)
  api_reject bool           the API answers 401 to everything
  api_reject_early n        the next n API requests with a bearer token get 401 (and their token
                            revoked) as soon as their head is read, before any body byte; then
                            the mock stops writing, discards what comes and closes on EOF
  credentials {prov: {field: value}}  replaces credentials (e.g. an EPC secret like 000's)
  revoke_all true           revokes every access token issued so far
  revoke [tokens]           revokes these
  heal true                 clears fail, delay_s, api_reject, refresh; releases hung requests
  reset true                zeroes hits, minted, requests, api counters (not the issued lists)
The "*" key applies to every provider not named. The answer is the current settings.

GET /__stats: {credentials, settings, hits {"epc.token": n, "eptura.auth": n, ...} (every
request reaching an endpoint), minted {key: {grant: n}} (successful issues; eptura's codes count
as grant "code"), requests [every provider request: endpoint, key, method, target, headers,
body, status, grant, error, presented], issued {access_tokens, refresh_tokens, codes},
revocations [{endpoint, token, known, status}], introspections, api {requests, ok,
unauthorized, log [{method, path, token, status, reason, body_sha256, body_length}]},
connections {provider, api} (TCP connections that made a request other than /__*), hanging}.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import ssl
import string
import sys
import threading
import time
from urllib.parse import parse_qsl, unquote_plus, urlsplit

RBUF = 64 * 1024
TOKEN_BODY_MAX = 1 << 20
ALNUM = string.ascii_letters + string.digits
SPECIAL = "!@^$#&+=/%:*"
FAIL_MODES = {"500", "hang", "garbage", "429", "503", "drop", "big", "expires_zero",
              "expires_negative", "mac", "bearer_lower", "no_access_token"}
OUTAGE_MODES = {"500", "hang", "garbage", "429", "503", "drop"}
# parameter names that must never travel as (non x-) headers, nor x- headers on form endpoints
PARAMISH = {"grant_type", "client_id", "client_secret", "scope", "code", "auth_code",
            "refresh_token", "username", "password", "redirect_uri", "token", "auth_username",
            "auth_password", "dealtrack_registration_id", "registration_id"}


def rnd(n):
    return "".join(secrets.choice(ALNUM) for _ in range(n))


def secret_value():
    """A secret that needs encoding in a form body: 20 alnum, 5 specials, 4 alnum."""
    return rnd(20) + "".join(secrets.choice(SPECIAL) for _ in range(5)) + rnd(4)


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Closed(Exception):
    pass


class BadRequest(Exception):
    pass


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self):
        data = self.sock.recv(RBUF)
        if not data:
            raise Closed()
        self.buf += data

    def read_head(self, limit=1 << 20):
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head = bytes(self.buf[: i + 4])
                del self.buf[: i + 4]
                return head
            if len(self.buf) > limit:
                raise BadRequest("head too large")
            self._fill()

    def read_line(self, limit=65536):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if len(self.buf) > limit:
                raise BadRequest("line too long")
            self._fill()

    def stream(self, n, sink):
        while n > 0:
            if not self.buf:
                self._fill()
            take = min(n, len(self.buf))
            sink(bytes(self.buf[:take]))
            del self.buf[:take]
            n -= take


# ---------------------------------------------------------------------------------------------
# state

class Tok:
    __slots__ = ("key", "issued", "expires", "idle", "last_use", "revoked", "client_id", "scope")


class State:
    def __init__(self):
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.heal_gen = 0
        self.hanging = 0
        self.jwt_key = secrets.token_bytes(32)
        self.creds = {
            # alphanumeric by default; EPC's raw Basic is tested with a documented-style secret
            # set through the control interface ("credentials")
            "epc": {"client_id": rnd(8).lower(), "client_secret": rnd(40)},
            "eptura": {"client_id": rnd(24), "username": "user-%s@acme.example" % rnd(6),
                       "password": secret_value(), "redirect_uri": "https://localhost/callback",
                       "scope": "api"},
            "enable": {"client_id": "%s-%s" % (rnd(8).lower(), rnd(4).lower()),
                       "client_secret": secret_value(),
                       "registration_id": "%s-%s-%s" % (rnd(8).lower(), rnd(4).lower(),
                                                       rnd(12).lower())},
            "rfc": {"client_id": "rfc-" + rnd(10), "client_secret": secret_value(),
                    "refresh_token": "seedRT" + rnd(30)},
        }
        self.settings = self.default_settings()
        self.tokens = {}
        self.refresh = {self.creds["rfc"]["refresh_token"]: {
            "key": "rfc*", "client_id": self.creds["rfc"]["client_id"], "scope": None,
            "redirect_uri": None, "used": False, "revoked": False}}
        self.codes = {}
        self.issued = {"access_tokens": [], "refresh_tokens": [], "codes": []}
        self.revocations = []
        self.introspections = []
        self.reset_counters()
        self.connections = {"provider": 0, "api": 0}

    @staticmethod
    def default_settings():
        return {
            "lifetime_s": {"*": 3600, "epc": 7200},
            "idle_s": {"epc": 900},
            "expires_in": {},
            "omit_expires_in": {},
            "fail": {},
            "retry_after": 2,
            "delay_s": {},
            "code_ttl_s": 300,
            "refresh": "ok",
            "scopes": ["read:deals", "read:activitylogs", "read:users"],
            "public": {},
            "cc_refresh": {},
            "api_reject": False,
            "api_reject_early": 0,
        }

    def reset_counters(self):
        self.hits = {}
        self.minted = {}
        self.requests = []
        self.api = {"requests": 0, "ok": 0, "unauthorized": 0, "log": []}

    # settings lookup: "rfc-json/x" -> "rfc-json/x", "rfc-json", "*"
    def setting(self, name, key, endpoint="token", default=None):
        d = self.settings[name]
        cands = []
        if endpoint != "token":
            cands.append(key + "." + endpoint)
        else:
            cands.append(key + ".token")
            cands.append(key)
            if "/" in key:
                cands.append(key.split("/")[0])
        for c in cands:
            if c in d:
                return d[c]
        if endpoint == "token" and "*" in d:
            return d["*"]
        return default

    def snapshot(self):
        with self.lock:
            return {
                "credentials": self.creds,
                "settings": self.settings,
                "hits": dict(self.hits),
                "minted": {k: dict(v) for k, v in self.minted.items()},
                "requests": list(self.requests),
                "issued": {k: list(v) for k, v in self.issued.items()},
                "revocations": list(self.revocations),
                "introspections": list(self.introspections),
                "api": {"requests": self.api["requests"], "ok": self.api["ok"],
                        "unauthorized": self.api["unauthorized"],
                        "log": list(self.api["log"])},
                "connections": dict(self.connections),
                "hanging": self.hanging,
            }

    def control(self, obj):
        if not isinstance(obj, dict):
            raise ValueError("control body must be a JSON object")
        dict_fields = ("lifetime_s", "idle_s", "expires_in", "omit_expires_in", "fail",
                       "delay_s", "public", "cc_refresh")
        known = set(dict_fields) | {"retry_after", "code_ttl_s", "refresh", "scopes",
                                    "api_reject", "revoke_all", "revoke", "heal", "reset",
                                    "credentials", "api_reject_early"}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError("unknown control field(s): %s" % ", ".join(unknown))
        with self.lock:
            if obj.get("heal"):
                for f in ("fail", "delay_s"):
                    self.settings[f] = {}
                self.settings["api_reject"] = False
                self.settings["refresh"] = "ok"
                self.heal_gen += 1
                self.cond.notify_all()
            if obj.get("reset"):
                self.reset_counters()
            for f in dict_fields:
                if f in obj:
                    if not isinstance(obj[f], dict):
                        raise ValueError("%s must be an object {key: value}" % f)
                    for k, v in obj[f].items():
                        if f == "fail" and v is not None and str(v) not in FAIL_MODES:
                            raise ValueError("unknown fail mode %r" % v)
                        if v is None and f in ("fail", "delay_s", "expires_in"):
                            self.settings[f].pop(k, None)
                        else:
                            self.settings[f][k] = str(v) if f == "fail" else v
            for f in ("retry_after", "code_ttl_s", "api_reject", "api_reject_early"):
                if f in obj:
                    self.settings[f] = obj[f]
            if "refresh" in obj:
                if obj["refresh"] not in ("ok", "fail", "500"):
                    raise ValueError("refresh must be ok, fail or 500")
                self.settings["refresh"] = obj["refresh"]
            if "scopes" in obj:
                self.settings["scopes"] = list(obj["scopes"])
            for prov, fields in (obj.get("credentials") or {}).items():
                if prov not in self.creds or not isinstance(fields, dict) or \
                        set(fields) - set(self.creds[prov]):
                    raise ValueError("credentials: unknown provider or field in %r" % prov)
                self.creds[prov].update(fields)
            if obj.get("revoke_all"):
                for t in self.tokens.values():
                    t.revoked = True
            for tok in obj.get("revoke") or []:
                if tok in self.tokens:
                    self.tokens[tok].revoked = True
                if tok in self.refresh:
                    self.refresh[tok]["revoked"] = True
            return {"ok": True, "settings": self.settings}

    def count_minted(self, key, grant):
        m = self.minted.setdefault(key, {})
        m[grant] = m.get(grant, 0) + 1

    def issue_access(self, key, client_id, scope, jwt_claims=None):
        now = time.time()
        lifetime = float(self.setting("lifetime_s", key, default=3600))
        idle = self.setting("idle_s", key)
        t = Tok()
        t.key, t.issued, t.idle, t.last_use = key, now, (float(idle) if idle else None), now
        t.revoked, t.client_id, t.scope = False, client_id, scope
        if jwt_claims is not None:
            exp = int(now + lifetime)
            header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
            claims = {"iss": "https://mock-enable.test", "aud": "enable-api", "sub": client_id,
                      "scope": scope, "iat": int(now), "exp": exp, "jti": rnd(16)}
            claims.update(jwt_claims)
            payload = b64url(json.dumps(claims).encode())
            sig = b64url(hmac.new(self.jwt_key, (header + "." + payload).encode(),
                                  hashlib.sha256).digest())
            tok = header + "." + payload + "." + sig
            t.expires = float(exp)
            expires_in_s = max(0, int(exp - now))
        else:
            tok = rnd(28)
            t.expires = now + lifetime
            expires_in_s = int(lifetime)
        self.tokens[tok] = t
        self.issued["access_tokens"].append(tok)
        return tok, expires_in_s, lifetime

    def issue_refresh(self, key, client_id, scope, redirect_uri):
        rt = "RT" + rnd(38)
        self.refresh[rt] = {"key": key, "client_id": client_id, "scope": scope,
                            "redirect_uri": redirect_uri, "used": False, "revoked": False}
        self.issued["refresh_tokens"].append(rt)
        return rt

    def check_api_token(self, tok):
        """(ok, reason, key). A valid use slides the idle timer."""
        with self.lock:
            if self.settings["api_reject"]:
                return False, "api_reject", None
            t = self.tokens.get(tok)
            if t is None:
                return False, "unknown", None
            now = time.time()
            if t.revoked:
                return False, "revoked", t.key
            if now >= t.expires:
                return False, "expired", t.key
            if t.idle is not None and now - t.last_use >= t.idle:
                return False, "idle", t.key
            t.last_use = now
            return True, "ok", t.key


ST = State()


# ---------------------------------------------------------------------------------------------
# HTTP plumbing

STATUS_TEXT = {100: "Continue", 200: "OK", 201: "Created", 204: "No Content",
               400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
               405: "Method Not Allowed", 413: "Payload Too Large", 429: "Too Many Requests",
               500: "Internal Server Error", 503: "Service Unavailable"}


class Req:
    def __init__(self, method, target, version, headers):
        self.method, self.target, self.version, self.headers = method, target, version, headers
        parts = urlsplit(target)
        self.path, self.query = parts.path, parts.query
        self.h = {}
        for k, v in headers:
            self.h.setdefault(k.lower(), []).append(v)
        self.body = b""
        self.body_len = 0
        self.body_sha = hashlib.sha256(b"").hexdigest()

    def get(self, name):
        v = self.h.get(name.lower())
        return v[0] if v else None

    def ctype(self):
        return (self.get("content-type") or "").split(";")[0].strip().lower()


class Answer:
    def __init__(self, status, body=b"", headers=(), ctype="application/json", action=None):
        self.status, self.body, self.headers, self.ctype = status, body, list(headers), ctype
        self.action = action  # None, "hang", "drop"


def janswer(status, obj, headers=()):
    return Answer(status, json.dumps(obj).encode(),
                  [("Cache-Control", "no-store"), ("Pragma", "no-cache")] + list(headers))


class OAuthError(Exception):
    def __init__(self, status, error, description, headers=()):
        Exception.__init__(self, "%s: %s" % (error, description))
        self.status, self.error, self.description, self.headers = (status, error, description,
                                                                   list(headers))

    def answer(self):
        return janswer(self.status, {"error": self.error,
                                     "error_description": self.description}, self.headers)


def bad(desc):
    return OAuthError(400, "invalid_request", desc)


class Conn:
    def __init__(self, sock, tls_ctx, kind):
        self.sock, self.tls_ctx, self.kind = sock, tls_ctx, kind
        self.counted = False  # connections are counted at their first non-control request

    def send(self, req, ans, keep):
        if ans.action == "drop":
            return False
        hdrs = list(ans.headers)
        no_body = ans.status in (204, 304) or req.method == "HEAD"
        if ans.ctype and not no_body:
            hdrs.append(("Content-Type", ans.ctype))
        if not no_body:
            hdrs.append(("Content-Length", str(len(ans.body))))
        if not keep:
            hdrs.append(("Connection", "close"))
        head = "HTTP/1.1 %d %s\r\n" % (ans.status, STATUS_TEXT.get(ans.status, "Status"))
        head += "".join("%s: %s\r\n" % kv for kv in hdrs) + "\r\n"
        self.sock.sendall(head.encode("latin-1") + (b"" if no_body else ans.body))
        return keep

    def run(self):
        try:
            if self.tls_ctx is not None:
                self.sock.settimeout(10)
                try:
                    self.sock = self.tls_ctx.wrap_socket(self.sock, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                self.sock.settimeout(None)
            self.reader = Reader(self.sock)
            while self.one():
                pass
        except (Closed, ConnectionError, ssl.SSLError, OSError):
            pass
        except BadRequest as e:
            sys.stderr.write("mock_providers: bad request: %s\n" % e)
            try:
                self.sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                  b"Connection: close\r\n\r\n")
            except OSError:
                pass
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def read_body(self, req, sink):
        te = ",".join(req.h.get("transfer-encoding", [])).lower()
        cl = req.h.get("content-length")
        if "chunked" in te:
            while True:
                line = self.reader.read_line()
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise BadRequest("chunk size %r" % line[:80])
                if size == 0:
                    while self.reader.read_line() != b"":
                        pass
                    return
                self.reader.stream(size, sink)
                if self.reader.read_line() != b"":
                    raise BadRequest("chunk not followed by CRLF")
        elif cl:
            try:
                n = int(cl[0])
            except ValueError:
                raise BadRequest("content-length %r" % cl[0])
            self.reader.stream(n, sink)

    def reject_early(self, req):
        """api_reject_early: 401 before reading the body; True when it answered."""
        auth = req.get("authorization") or ""
        if auth[:7].lower() != "bearer " or req.path.startswith(("/public", "/__")):
            return False
        tok = auth[7:].strip()
        with ST.lock:
            if ST.settings["api_reject_early"] <= 0:
                return False
            ST.settings["api_reject_early"] -= 1
            if tok in ST.tokens:
                ST.tokens[tok].revoked = True
            ST.api["requests"] += 1
            ST.api["unauthorized"] += 1
            ST.api["log"].append({"method": req.method, "path": req.path, "token": tok,
                                  "status": 401, "reason": "rejected before the body",
                                  "key": None, "body_sha256": None, "body_length": None,
                                  "t": time.time()})
        self.send(req, janswer(401, {"error": "invalid_token", "error_description": "early"},
                               [("WWW-Authenticate", 'Bearer error="invalid_token"')]), False)
        try:  # a lingering close: the 401 is read before anything resets the connection
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(5)
            while self.sock.recv(65536):
                pass
        except OSError:
            pass
        return True

    def one(self):
        head = self.reader.read_head()
        lines = head[:-4].split(b"\r\n")
        try:
            method, target, version = lines[0].decode("latin-1").split(" ")
        except ValueError:
            raise BadRequest("request line %r" % lines[0][:100])
        headers = []
        for ln in lines[1:]:
            k, sep, v = ln.decode("latin-1").partition(":")
            if not sep:
                raise BadRequest("header line %r" % ln[:100])
            headers.append([k, v.strip(" \t")])
        req = Req(method, target, version, headers)
        if not self.counted and not req.path.startswith("/__"):
            self.counted = True
            with ST.lock:
                ST.connections[self.kind] += 1
        conn_tokens = [t.strip().lower() for v in req.h.get("connection", [])
                       for t in v.split(",")]
        keep = version == "HTTP/1.1" and "close" not in conn_tokens
        if self.kind == "api" and self.reject_early(req):
            return False
        if any(v.lower() == "100-continue" for v in req.h.get("expect", [])):
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        hasher = hashlib.sha256()
        chunks = []
        size = [0]
        keep_body = self.kind == "provider" or req.path.startswith("/__")

        def sink(b):
            hasher.update(b)
            size[0] += len(b)
            if keep_body and size[0] <= 4 * TOKEN_BODY_MAX:
                chunks.append(b)

        self.read_body(req, sink)
        req.body = b"".join(chunks)
        req.body_len = size[0]
        req.body_sha = hasher.hexdigest()
        if req.path == "/__stats":
            ans = janswer(200, ST.snapshot())
        elif req.path == "/__control":
            try:
                ans = janswer(200, ST.control(json.loads(req.body.decode("utf-8") or "{}")))
            except ValueError as e:
                ans = janswer(400, {"error": "bad_control", "detail": str(e)})
        elif self.kind == "api":
            ans = api(req)
        else:
            ans = provider(req)
        if ans.action == "hang":
            with ST.lock:
                gen = ST.heal_gen
                ST.hanging += 1
                ST.cond.wait_for(lambda: ST.heal_gen != gen, timeout=30)
                ST.hanging -= 1
            return False
        return self.send(req, ans, keep)


# ---------------------------------------------------------------------------------------------
# the mock API

def api(req):
    if req.path.startswith("/public"):
        ok, reason, key, tok = True, "public", None, None
    else:
        auth = req.get("authorization") or ""
        tok = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if tok is None:
            ok, reason, key = False, "no bearer token", None
        else:
            ok, reason, key = ST.check_api_token(tok)
    with ST.lock:
        ST.api["requests"] += 1
        ST.api["ok" if ok else "unauthorized"] += 1
        ST.api["log"].append({"method": req.method, "path": req.path, "token": tok,
                              "status": 200 if ok else 401, "reason": reason, "key": key,
                              "body_sha256": req.body_sha, "body_length": req.body_len,
                              "t": time.time()})
        if len(ST.api["log"]) > 5000:
            del ST.api["log"][:1000]
    if not ok:
        if tok is None:
            hdr = 'Bearer realm="mock-api"'
        else:
            hdr = 'Bearer error="invalid_token"'
        return janswer(401, {"error": "invalid_token", "error_description": reason},
                       [("WWW-Authenticate", hdr)])
    return janswer(200, {"method": req.method, "target": req.target, "path": req.path,
                         "headers": req.headers, "body_length": req.body_len,
                         "body_sha256": req.body_sha, "token_key": key})


# ---------------------------------------------------------------------------------------------
# the providers

RFC_RE = re.compile(r"^/(rfc|rfc-json|rfc-headers)(/[A-Za-z0-9_.-]+)?/(token|revoke)$")


def route(path):
    """(key, endpoint, handler) or None."""
    table = {
        "/oauth2/v1/token": ("epc", "token", epc_token),
        "/oauth2/v1/token/introspection": ("epc", "introspect", epc_introspect),
        "/oauth2/v1/token/revocation": ("epc", "revoke", epc_revoke),
        "/external/api/oauth2/auth": ("eptura", "auth", eptura_auth),
        "/external/api/oauth2/token": ("eptura", "token", eptura_token),
        "/external/api/oauth2/revoke": ("eptura", "revoke", eptura_revoke),
        "/connect/token": ("enable", "token", enable_token),
    }
    if path in table:
        return table[path]
    m = RFC_RE.match(path)
    if m:
        key = m.group(1) + (m.group(2) or "")
        return key, m.group(3), (rfc_token if m.group(3) == "token" else rfc_revoke)
    return None


def provider(req):
    r = route(req.path)
    if r is None:
        return janswer(404, {"error": "not_found", "error_description": "no such endpoint"})
    key, endpoint, handler = r
    ep = "%s.%s" % (key, endpoint)
    entry = {"endpoint": ep, "key": key, "method": req.method, "target": req.target,
             "headers": req.headers, "body": req.body[:8192].decode("latin-1"),
             "status": None, "grant": None, "error": None, "presented": {}, "t": time.time()}
    with ST.lock:
        ST.hits[ep] = ST.hits.get(ep, 0) + 1
        ST.requests.append(entry)
        if len(ST.requests) > 3000:
            del ST.requests[:500]
        delay = ST.setting("delay_s", key, endpoint, 0)
        mode = ST.setting("fail", key, endpoint)
        retry_after = ST.settings["retry_after"]
    if delay:
        time.sleep(float(delay))
        with ST.lock:  # healed while sleeping?
            mode = ST.setting("fail", key, endpoint)
    if mode in OUTAGE_MODES:
        ans = outage(mode, retry_after)
    elif req.method != "POST":
        ans = janswer(405, {"error": "invalid_request", "error_description": "POST only"},
                      [("Allow", "POST")])
    else:
        try:
            ans = handler(req, key, entry, mode)
        except OAuthError as e:
            ans = e.answer()
            entry["error"] = e.error
    entry["status"] = ans.status if ans.action is None else ans.action
    sys.stderr.write("mock_providers: %s %s -> %s %s\n" % (req.method, req.target,
                                                          entry["status"], entry["error"] or ""))
    return ans


def outage(mode, retry_after):
    if mode == "500":
        return Answer(500, b"internal server error\n", ctype="text/plain")
    if mode in ("429", "503"):
        return Answer(int(mode), b"slow down\n", [("Retry-After", str(retry_after))],
                      ctype="text/plain")
    if mode == "garbage":
        return Answer(200, b"<html><body>\x00\x01 this is not JSON {{{</body></html>",
                      ctype="application/json")
    return Answer(0, action=mode)  # hang, drop


def no_query(req):
    if req.query:
        raise bad("parameters must not be sent in the URL query")


def form_only(req, allow_authorization=True):
    """The body is the only place for parameters: no query, no parameter-like headers."""
    no_query(req)
    for k, _ in req.headers:
        n = k.lower()
        base = n[2:] if n.startswith("x-") else n
        if base.replace("-", "_") in PARAMISH:
            raise bad("parameter header %s: parameters go in the form body" % k)
    if req.ctype() != "application/x-www-form-urlencoded":
        raise bad("Content-Type must be application/x-www-form-urlencoded, not %r"
                  % req.get("content-type"))
    return parse_form(req.body)


def parse_form(body):
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (ValueError, UnicodeDecodeError):
        raise bad("the form body does not parse")
    out = {}
    for k, v in pairs:
        if k in out:
            raise bad("parameter %s repeated" % k)
        out[k] = v
    return out


def empty_body_json(req):
    """Header-style endpoints: the body is empty or {} and the Content-Type is JSON."""
    no_query(req)
    if req.ctype() != "application/json":
        raise bad("Content-Type must be application/json, not %r" % req.get("content-type"))
    text = req.body.decode("utf-8", "replace").strip()
    if text not in ("", "{}"):
        raise bad("parameters go in x- headers, not in the body (%r)" % text[:100])


def basic_credentials(req):
    """(client_id, secret) from an Authorization: Basic header, None without one."""
    auth = req.get("authorization")
    if auth is None:
        return None
    if auth[:6].lower() != "basic ":
        raise OAuthError(401, "invalid_client", "unsupported Authorization scheme",
                         [("WWW-Authenticate", 'Basic realm="mock"')])
    try:
        raw = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise OAuthError(401, "invalid_client", "Basic credentials do not decode",
                         [("WWW-Authenticate", 'Basic realm="mock"')])
    cid, sep, sec = raw.partition(":")
    if not sep:
        raise OAuthError(401, "invalid_client", "Basic credentials without ':'",
                         [("WWW-Authenticate", 'Basic realm="mock"')])
    return cid, sec


def client_auth(req, params, creds, public=False, entry=None, raw_basic=False):
    """Authenticates the client by Basic or by client_id/client_secret parameters (one way).
    Basic credentials may be raw or url-encoded (RFC 6749 2.3.1) unless raw_basic."""
    basic = basic_credentials(req)
    body_secret = "client_secret" in params
    if public:
        if basic is not None or body_secret:
            raise bad("this client is public: no client secret expected")
        if "client_id" in params and params["client_id"] != creds["client_id"]:
            raise OAuthError(400, "invalid_client", "unknown client")
        if entry is not None:
            entry["presented"]["client_auth"] = "none"
        return
    if basic is not None and body_secret:
        raise bad("more than one client authentication method (Basic and client_secret)")
    if basic is not None and raw_basic:
        if "client_id" in params and params["client_id"] != creds["client_id"]:
            raise OAuthError(401, "invalid_client", "client_id differs from the Basic user")
        return epc_check_basic(basic, creds, entry)
    if basic is not None:
        cid, sec = basic
        ok = (cid == creds["client_id"] and sec == creds["client_secret"]) or \
            (unquote_plus(cid) == creds["client_id"] and unquote_plus(sec) == creds["client_secret"])
        if "client_id" in params and params["client_id"] != creds["client_id"]:
            ok = False
        if entry is not None:
            entry["presented"]["client_auth"] = "basic"
        if not ok:
            raise OAuthError(401, "invalid_client", "client authentication failed",
                             [("WWW-Authenticate", 'Basic realm="mock"')])
        return
    if entry is not None:
        entry["presented"]["client_auth"] = "body"
    if "client_id" not in params:
        raise OAuthError(401, "invalid_client", "no client authentication",
                         [("WWW-Authenticate", 'Basic realm="mock"')])
    if not body_secret:
        raise OAuthError(400, "invalid_client", "client_secret missing")
    if params["client_id"] != creds["client_id"] or params["client_secret"] != creds["client_secret"]:
        raise OAuthError(400, "invalid_client", "client authentication failed")


def token_answer(key, status, obj, mode, unit_ms=False, omit_expires_in=False):
    """The success body, tampered with by the fail mode if one is set."""
    raw = ST.setting("expires_in", key)
    if raw is not None:
        obj["expires_in"] = raw
    if omit_expires_in:
        obj.pop("expires_in", None)
    if mode == "expires_zero":
        obj["expires_in"] = 0
    elif mode == "expires_negative":
        obj["expires_in"] = -30000 if unit_ms else -30
    elif mode == "mac":
        obj["token_type"] = "mac"
    elif mode == "bearer_lower":
        obj["token_type"] = "bearer"
    elif mode == "no_access_token":
        obj.pop("access_token", None)
        obj["acess_token"] = "x"
    elif mode == "big":
        obj["padding"] = "p" * (2 << 20)
    return janswer(status, obj)


def scope_set(s):
    parts = s.split(" ")
    if any(p == "" for p in parts):
        raise bad("scope %r is not space-delimited" % s)
    return set(parts)


# ---- EPC ------------------------------------------------------------------------------------

def epc_token(req, key, entry, mode):
    params = form_only(req)
    entry["grant"] = params.get("grant_type")
    client_auth(req, params, ST.creds["epc"], entry=entry, raw_basic=True)
    if "grant_type" not in params:
        raise bad("grant_type is required")
    if params["grant_type"] != "client_credentials":
        raise OAuthError(400, "unsupported_grant_type", "grant_type must be client_credentials")
    if "scope" not in params:
        raise bad("scope is required")
    if scope_set(params["scope"]) != {"pc", "pcapi"}:
        raise OAuthError(400, "invalid_scope", "scope must be \"pc pcapi\"")
    with ST.lock:
        tok, exp_s, _ = ST.issue_access("epc", ST.creds["epc"]["client_id"], "pc pcapi")
        ST.count_minted("epc", "client_credentials")
    return token_answer("epc", 201, {"access_token": tok, "token_type": "Bearer",
                                     "expires_in": exp_s}, mode)


def epc_basic_only(req, creds, entry=None):
    basic = basic_credentials(req)
    if basic is None:
        raise OAuthError(401, "invalid_client", "HTTP Basic client authentication required",
                         [("WWW-Authenticate", 'Basic realm="mock"')])
    epc_check_basic(basic, creds, entry)


def epc_check_basic(basic, creds, entry):
    """EPC's documents send Basic as curl -u does: id:secret raw, not url-encoded (001's curl
    -u; 000's example header decodes to a secret with raw ! @ ^ $ #)."""
    cid, sec = basic
    if entry is not None:
        entry["presented"]["client_auth"] = "basic"
    if cid == creds["client_id"] and sec == creds["client_secret"]:
        return
    why = "client authentication failed"
    if unquote_plus(cid) == creds["client_id"] and unquote_plus(sec) == creds["client_secret"]:
        why = "client authentication failed (credentials url-encoded; EPC expects them raw)"
        if entry is not None:
            entry["presented"]["basic"] = "url-encoded"
    raise OAuthError(401, "invalid_client", why, [("WWW-Authenticate", 'Basic realm="mock"')])


def epc_introspect(req, key, entry, mode):
    params = form_only(req)
    epc_basic_only(req, ST.creds["epc"], entry)
    if set(params) != {"token"}:
        raise bad("exactly one parameter, token, expected")
    tok = params["token"]
    with ST.lock:
        t = ST.tokens.get(tok)
        now = time.time()
        active = (t is not None and not t.revoked and now < t.expires and
                  (t.idle is None or now - t.last_use < t.idle))
        ST.introspections.append({"token": tok, "active": active})
    if not active:
        return janswer(200, {"active": False})
    return janswer(200, {"active": True, "scope": "pc pcapi",
                         "client_id": ST.creds["epc"]["client_id"], "token_type": "Bearer",
                         "exp": int(t.expires), "environment": "Test",
                         "identity_type": "Partner", "encompass_client_id": "007001"})


def epc_revoke(req, key, entry, mode):
    params = form_only(req)
    epc_basic_only(req, ST.creds["epc"], entry)
    tok = params.get("token")
    if tok is None or set(params) - {"token", "token_type_hint"}:
        raise bad("token is required (and nothing else)")
    with ST.lock:
        t = ST.tokens.get(tok)
        rec = {"endpoint": "epc.revoke", "token": tok, "known": t is not None,
               "status": 204 if t is not None else 400}
        ST.revocations.append(rec)
        if t is None:
            raise OAuthError(400, "invalid_request", "unknown token")
        t.revoked = True
    return Answer(204, ctype=None)


# ---- Eptura ---------------------------------------------------------------------------------

def eptura_headers(req, required):
    empty_body_json(req)
    if req.get("authorization") is not None:
        raise bad("the client is identified by x-client-id, not an Authorization header")
    for k, _ in req.headers:
        n = k.lower()
        if not n.startswith("x-") and n.replace("-", "_") in PARAMISH:
            raise bad("parameter header %s must be x-%s" % (k, n))
    out = {}
    for name in required:
        v = req.h.get(name)
        if not v:
            raise bad("header %s is required" % name)
        if len(v) > 1:
            raise bad("header %s repeated" % name)
        out[name] = v[0]
    return out


def eptura_auth(req, key, entry, mode):
    h = eptura_headers(req, ("x-auth-username", "x-auth-password", "x-client-id",
                             "x-redirect-uri", "x-scope"))
    c = ST.creds["eptura"]
    entry["grant"] = "code"
    if h["x-client-id"] != c["client_id"]:
        raise OAuthError(401, "invalid_client", "unknown client id")
    if h["x-redirect-uri"] != c["redirect_uri"]:
        raise bad("redirect_uri is not registered for this client")
    if h["x-auth-username"] != c["username"] or h["x-auth-password"] != c["password"]:
        raise OAuthError(400, "invalid_grant", "bad username or password")
    with ST.lock:
        code = "C" + rnd(31)
        ST.codes[code] = {"client_id": h["x-client-id"], "redirect_uri": h["x-redirect-uri"],
                          "scope": h["x-scope"], "created": time.time(), "used": False}
        ST.issued["codes"].append(code)
        ST.count_minted("eptura", "code")
    return janswer(200, {"code": code})


def eptura_token(req, key, entry, mode):
    h = eptura_headers(req, ("x-grant-type", "x-client-id", "x-redirect-uri", "x-scope"))
    c = ST.creds["eptura"]
    grant = h["x-grant-type"]
    entry["grant"] = grant
    if h["x-client-id"] != c["client_id"]:
        raise OAuthError(401, "invalid_client", "unknown client id")
    with ST.lock:
        if grant == "authorization_code":
            code = req.get("x-auth-code")
            if not code:
                raise bad("header x-auth-code is required")
            entry["presented"]["code"] = code
            rec = ST.codes.get(code)
            if rec is None:
                raise OAuthError(400, "invalid_grant", "unknown authorization code")
            if rec["used"]:
                raise OAuthError(400, "invalid_grant", "authorization code already used")
            rec["used"] = True
            if time.time() - rec["created"] > float(ST.settings["code_ttl_s"]):
                raise OAuthError(400, "invalid_grant", "authorization code expired")
            if rec["redirect_uri"] != h["x-redirect-uri"]:
                raise OAuthError(400, "invalid_grant", "redirect_uri differs from the code's")
            if rec["scope"] != h["x-scope"]:
                raise OAuthError(400, "invalid_scope", "scope differs from the code's")
            scope = rec["scope"]
        elif grant == "refresh_token":
            rt = req.get("x-refresh-token")
            if not rt:
                raise bad("header x-refresh-token is required")
            entry["presented"]["refresh_token"] = rt
            rec = ST.refresh.get(rt)
            if ST.settings["refresh"] == "fail":
                raise OAuthError(400, "invalid_grant", "refresh token refused")
            if ST.settings["refresh"] == "500":
                raise OAuthError(500, "server_error", "refresh is broken today")
            if rec is None or rec["key"] != "eptura":
                raise OAuthError(400, "invalid_grant", "unknown refresh token")
            if rec["used"] or rec["revoked"]:
                raise OAuthError(400, "invalid_grant", "refresh token already used (rotated)")
            if rec["scope"] != h["x-scope"]:
                raise OAuthError(400, "invalid_scope", "scope differs from the original")
            if rec["redirect_uri"] != h["x-redirect-uri"]:
                raise OAuthError(400, "invalid_grant", "redirect_uri differs")
            rec["used"] = True
            scope = rec["scope"]
        else:
            raise OAuthError(400, "unsupported_grant_type", "x-grant-type %r" % grant)
        tok, _, lifetime = ST.issue_access("eptura", c["client_id"], scope)
        rt = ST.issue_refresh("eptura", c["client_id"], scope, h["x-redirect-uri"])
        ST.count_minted("eptura", grant)
    return token_answer("eptura", 200, {"token_type": "Bearer", "access_token": tok,
                                        "expires_in": int(lifetime * 1000),
                                        "refresh_token": rt}, mode, unit_ms=True)


def revoke(tok, endpoint):
    """Marks an access or refresh token revoked (unknown ones too: RFC 7009 answers 200) and
    records the call."""
    with ST.lock:
        known = tok in ST.tokens or tok in ST.refresh
        if tok in ST.tokens:
            ST.tokens[tok].revoked = True
        if tok in ST.refresh:
            ST.refresh[tok]["revoked"] = True
        ST.revocations.append({"endpoint": endpoint, "token": tok, "known": known,
                               "status": 200})


def eptura_revoke(req, key, entry, mode):
    no_query(req)
    if req.body.strip() not in (b"", b"{}"):
        raise bad("the token goes in the x-token header, not the body")
    tok = req.get("x-token")
    if not tok:
        raise bad("header x-token is required")
    revoke(tok, "eptura.revoke")
    return janswer(200, {})


# ---- Enable ---------------------------------------------------------------------------------

def enable_token(req, key, entry, mode):
    params = form_only(req)
    entry["grant"] = params.get("grant_type")
    if req.get("authorization") is not None:
        raise bad("client credentials go in the form body (client_id, client_secret)")
    c = ST.creds["enable"]
    for name in ("grant_type", "client_id", "client_secret", "dealtrack_registration_id",
                 "scope"):
        if name not in params:
            raise bad("%s is required" % name)
    if params["grant_type"] != "client_credentials":
        raise OAuthError(400, "unsupported_grant_type", "only client_credentials")
    if params["client_id"] != c["client_id"] or params["client_secret"] != c["client_secret"]:
        raise OAuthError(400, "invalid_client", "client authentication failed")
    if params["dealtrack_registration_id"] != c["registration_id"]:
        raise OAuthError(400, "invalid_client", "unknown dealtrack_registration_id")
    scopes = scope_set(params["scope"]) if params["scope"] else set()
    with ST.lock:
        allowed = set(ST.settings["scopes"])
    if not scopes or not scopes <= allowed:
        raise OAuthError(400, "invalid_scope", "scope outside what this client may request")
    with ST.lock:
        tok, exp_s, _ = ST.issue_access("enable", c["client_id"], params["scope"],
                                        jwt_claims={"registration_id": c["registration_id"]})
        ST.count_minted("enable", "client_credentials")
        omit = bool(ST.setting("omit_expires_in", "enable", default=False))
    return token_answer("enable", 200, {"access_token": tok, "expires_in": exp_s,
                                        "token_type": "Bearer", "scope": params["scope"]},
                        mode, omit_expires_in=omit)


# ---- generic RFC 6749 -----------------------------------------------------------------------

HEADER_PARAMS = {"x-grant-type": "grant_type", "x-client-id": "client_id",
                 "x-client-secret": "client_secret", "x-scope": "scope",
                 "x-refresh-token": "refresh_token"}


def rfc_params(req, key):
    style = key.split("/")[0]
    if style == "rfc":
        return form_only(req)
    no_query(req)
    if style == "rfc-json":
        for k, _ in req.headers:
            n = k.lower()
            if (n[2:] if n.startswith("x-") else n).replace("-", "_") in PARAMISH:
                raise bad("parameter header %s: parameters go in the JSON body" % k)
        if req.ctype() != "application/json":
            raise bad("Content-Type must be application/json")
        try:
            obj = json.loads(req.body.decode("utf-8"))
        except ValueError:
            raise bad("the body is not JSON")
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise bad("the body must be a JSON object of strings")
        return obj
    # rfc-headers
    if req.body.strip() not in (b"", b"{}"):
        raise bad("parameters go in x- headers, not in the body")
    out = {}
    for k, v in req.headers:
        n = k.lower()
        if n in HEADER_PARAMS:
            if HEADER_PARAMS[n] in out:
                raise bad("header %s repeated" % k)
            out[HEADER_PARAMS[n]] = v
        elif n.replace("-", "_") in PARAMISH or (n.startswith("x-") and
                                                  n[2:].replace("-", "_") in PARAMISH):
            raise bad("unexpected parameter header %s" % k)
    return out


def rfc_token(req, key, entry, mode):
    params = rfc_params(req, key)
    entry["grant"] = params.get("grant_type")
    entry["presented"]["params"] = sorted(params)
    c = ST.creds["rfc"]
    client_auth(req, params, c, public=bool(ST.setting("public", key, default=False)),
                entry=entry)
    grant = params.get("grant_type")
    if grant is None:
        raise bad("grant_type is required")
    with ST.lock:
        extra = {}
        if grant == "client_credentials":
            if ST.setting("cc_refresh", key, default=False):
                extra["refresh_token"] = ST.issue_refresh("rfc*", c["client_id"], None, None)
        elif grant == "refresh_token":
            rt = params.get("refresh_token")
            if not rt:
                raise bad("refresh_token is required")
            entry["presented"]["refresh_token"] = rt
            rec = ST.refresh.get(rt)
            if ST.settings["refresh"] == "fail":
                raise OAuthError(400, "invalid_grant", "refresh token refused")
            if ST.settings["refresh"] == "500":
                raise OAuthError(500, "server_error", "refresh is broken today")
            if rec is None or not rec["key"].startswith("rfc"):
                raise OAuthError(400, "invalid_grant", "unknown refresh token")
            if rec["used"] or rec["revoked"]:
                raise OAuthError(400, "invalid_grant", "refresh token already used (rotated)")
            rec["used"] = True
            extra["refresh_token"] = ST.issue_refresh("rfc*", c["client_id"], None, None)
        else:
            raise OAuthError(400, "unsupported_grant_type", "grant_type %r" % grant)
        tok, exp_s, _ = ST.issue_access(key, c["client_id"], params.get("scope"))
        ST.count_minted(key, grant)
    obj = {"access_token": tok, "token_type": "Bearer", "expires_in": exp_s}
    obj.update(extra)
    return token_answer(key, 200, obj, mode)


def rfc_revoke(req, key, entry, mode):
    params = rfc_params(req, key)
    client_auth(req, params, ST.creds["rfc"],
                public=bool(ST.setting("public", key, default=False)), entry=entry)
    tok = params.get("token")
    if not tok:
        raise bad("token is required")
    revoke(tok, key + ".revoke")
    return Answer(200, b"", ctype=None)


# ---------------------------------------------------------------------------------------------

def listener(port):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(1024)
    return ls


def accept_loop(ls, tls_ctx, kind):
    while True:
        try:
            s, _ = ls.accept()
        except InterruptedError:
            continue
        except OSError:
            time.sleep(0.01)
            continue
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=Conn(s, tls_ctx, kind).run, daemon=True).start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--api-port", type=int, default=0)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    a = ap.parse_args()
    tls_ctx = None
    if a.tls:
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_ctx.load_cert_chain(a.tls[0], a.tls[1])
    lp, la = listener(a.port), listener(a.api_port)
    threading.Thread(target=accept_loop, args=(la, tls_ctx, "api"), daemon=True).start()
    sys.stdout.write("PORT %d API %d\n" % (lp.getsockname()[1], la.getsockname()[1]))
    sys.stdout.flush()
    accept_loop(lp, tls_ctx, "provider")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        os._exit(0)
