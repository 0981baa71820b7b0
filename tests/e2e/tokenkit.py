"""Helpers for the token tests (test_tokens*.py): the mock providers process, provider and
route configurations for each preset, and small request helpers. See mock_providers.py for
what the mock does and its control interface."""
import base64
import contextlib
import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from urllib.parse import quote, quote_plus

import harness
from harness import (ASAN, T, Proxy, certs, free_port, make_config, request, stop_process,
                     wait_port)

HERE = os.path.dirname(os.path.abspath(__file__))


class MockProviders(harness.Process):
    """mock_providers.py in its own process (TLS with the test CA's localhost certificate)."""

    def __init__(self, tls=True, settings=None):
        args = [sys.executable, os.path.join(HERE, "mock_providers.py"), "--port", "0",
                "--api-port", "0"]
        if tls:
            c = certs()
            args += ["--tls", c["cert"], c["key"]]
        self.tls = tls
        self.log_path = os.path.join(harness.logdir(), "mockprov-%d-%d.log"
                                     % (os.getpid(), id(self) % 100000))
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.port = self.api_port = None
        try:
            line = harness.ready_line(self.proc)
            parts = line.split()
            if len(parts) != 4 or parts[0] != b"PORT" or parts[2] != b"API":
                raise AssertionError("mock providers did not start: %r" % line)
            self.port, self.api_port = int(parts[1]), int(parts[3])
            if settings:
                self.control(**settings)
            self.creds = self.stats()["credentials"]
        except BaseException:
            self.stop()
            raise

    # addresses --------------------------------------------------------------------------
    @property
    def base(self):
        return "%s://localhost:%d" % ("https" if self.tls else "http", self.port)

    @property
    def api(self):
        return "%s://localhost:%d" % ("https" if self.tls else "http", self.api_port)

    def url(self, path):
        return self.base + path

    # control ----------------------------------------------------------------------------
    def _call(self, method, path, obj=None, port=None):
        port = port or self.port
        if self.tls:
            ctx = ssl.create_default_context(cafile=certs()["ca"])
            c = http.client.HTTPSConnection("localhost", port, timeout=T, context=ctx)
        else:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=T)
        try:
            body = json.dumps(obj).encode() if obj is not None else None
            c.request(method, path, body=body,
                      headers={"Content-Type": "application/json"} if body else {})
            r = c.getresponse()
            data = r.read()
            return r.status, r.getheaders(), data
        finally:
            c.close()

    def stats(self):
        st, _, data = self._call("GET", "/__stats")
        assert st == 200, "mock stats: %d %r" % (st, data[:200])
        return json.loads(data)

    def control(self, **fields):
        st, _, data = self._call("POST", "/__control", fields)
        assert st == 200, "mock control %r: %d %r" % (fields, st, data[:300])
        return json.loads(data)

    def heal(self):
        return self.control(heal=True)

    def revoke_all(self):
        return self.control(revoke_all=True)

    # direct calls (not through the proxy) -------------------------------------------------
    def post(self, path, headers=None, body=b"", port=None):
        """A raw POST to the mock (provider port by default): (status, headers, parsed JSON or
        bytes)."""
        port = port or self.port
        ctx = ssl.create_default_context(cafile=certs()["ca"])
        c = http.client.HTTPSConnection("localhost", port, timeout=T, context=ctx)
        try:
            if isinstance(body, str):
                body = body.encode()
            c.request("POST", path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            try:
                parsed = json.loads(data) if data else None
            except ValueError:
                parsed = data
            return r.status, r.getheaders(), parsed
        finally:
            c.close()

    def api_get(self, path, token=None):
        ctx = ssl.create_default_context(cafile=certs()["ca"])
        c = http.client.HTTPSConnection("localhost", self.api_port, timeout=T, context=ctx)
        try:
            c.request("GET", path, headers={"Authorization": "Bearer " + token} if token else {})
            r = c.getresponse()
            data = r.read()
            return r.status, r.getheaders(), data
        finally:
            c.close()

    def mint_direct(self, key="rfc"):
        """A token from the generic endpoint, not through the proxy."""
        c = self.creds["rfc"]
        path = "/rfc/token" if key == "rfc" else "/%s/token" % key
        st, _, obj = self.post(path, {"Content-Type": "application/x-www-form-urlencoded"},
                               "grant_type=client_credentials&client_id=%s&client_secret=%s"
                               % (quote_plus(c["client_id"]), quote_plus(c["client_secret"])))
        assert st == 200, "direct mint: %d %r" % (st, obj)
        return obj["access_token"]

    # environment for ${VAR} ---------------------------------------------------------------
    def env(self):
        c = self.creds
        return {
            "EPC_CLIENT_ID": c["epc"]["client_id"], "EPC_CLIENT_SECRET": c["epc"]["client_secret"],
            "EPTURA_CLIENT_ID": c["eptura"]["client_id"], "EPTURA_USER": c["eptura"]["username"],
            "EPTURA_PASSWORD": c["eptura"]["password"],
            "ENABLE_CLIENT_ID": c["enable"]["client_id"],
            "ENABLE_CLIENT_SECRET": c["enable"]["client_secret"],
            "ENABLE_REGISTRATION_ID": c["enable"]["registration_id"],
            "RFC_CLIENT_ID": c["rfc"]["client_id"], "RFC_CLIENT_SECRET": c["rfc"]["client_secret"],
            "RFC_REFRESH_TOKEN": c["rfc"]["refresh_token"],
        }

    def secrets(self):
        """Everything that must never appear in the proxy's outputs: configured secrets and
        every token, refresh token and code issued so far, plus derived forms."""
        c = self.creds
        st = self.stats()
        plain = [c["epc"]["client_secret"], c["eptura"]["password"], c["enable"]["client_secret"],
                 c["rfc"]["client_secret"], c["rfc"]["refresh_token"]]
        out = []
        for s in plain:
            out.append(("secret", s))
            out.append(("secret (its first 20 characters)", s[:20]))
            out.append(("secret, url-encoded", quote_plus(s)))
        for cid, sec in ((c["epc"]["client_id"], c["epc"]["client_secret"]),
                         (c["rfc"]["client_id"], c["rfc"]["client_secret"])):
            for s in ("%s:%s" % (cid, sec), "%s:%s" % (quote_plus(cid), quote_plus(sec)),
                      "%s:%s" % (quote(cid, safe=""), quote(sec, safe=""))):
                out.append(("Basic credentials", base64.b64encode(s.encode()).decode()))
        for kind in ("access_tokens", "refresh_tokens", "codes"):
            for tok in st["issued"][kind]:
                if tok.count(".") == 2:  # a JWT: its payload and signature
                    h, p, s = tok.split(".")
                    out.append((kind[:-1] + " (JWT payload)", p[:40]))
                    out.append((kind[:-1] + " (JWT signature)", s))
                else:
                    out.append((kind[:-1], tok))
                    out.append((kind[:-1] + " (prefix)", tok[:14]))
        return out

# ---- stats helpers ---------------------------------------------------------------------------

def hits(st, ep):
    """Requests that reached an endpoint ("epc.token", "eptura.auth", ...)."""
    return st["hits"].get(ep, 0)


def reqs(st, ep):
    return [r for r in st["requests"] if r["endpoint"] == ep]


def api_log(st, path=None):
    return [e for e in st["api"]["log"] if path is None or e["path"] == path]


def hget(headers, name):
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None


def form(body):
    from urllib.parse import parse_qsl
    return dict(parse_qsl(body, keep_blank_values=True))


# ---- configurations --------------------------------------------------------------------------

def epc(m, **over):
    p = {"preset": "epc", "token_url": m.url("/oauth2/v1/token"),
         "client_id": "${EPC_CLIENT_ID}", "client_secret": "${EPC_CLIENT_SECRET}"}
    p.update(over)
    return p


def eptura(m, **over):
    p = {"preset": "eptura", "site": m.base, "client_id": "${EPTURA_CLIENT_ID}",
         "username": "${EPTURA_USER}", "password": "${EPTURA_PASSWORD}",
         "redirect_uri": m.creds["eptura"]["redirect_uri"], "scope": m.creds["eptura"]["scope"]}
    p.update(over)
    return p


def enable(m, **over):
    p = {"preset": "enable", "token_url": m.url("/connect/token"),
         "client_id": "${ENABLE_CLIENT_ID}", "client_secret": "${ENABLE_CLIENT_SECRET}",
         "scope": "read:deals read:users",
         "params": {"dealtrack_registration_id": "${ENABLE_REGISTRATION_ID}"}}
    p.update(over)
    return p


def rfc(m, path="/rfc/token", **over):
    p = {"preset": "rfc6749", "token_url": m.url(path), "client_id": "${RFC_CLIENT_ID}",
         "client_secret": "${RFC_CLIENT_SECRET}"}
    p.update(over)
    return p


def host(name):
    return "%s.api.test" % name


def routes_for(m, providers, extra=()):
    """One route per provider: host <name>.api.test -> the mock API; plus public.test without
    a provider."""
    r = [{"host": host(n), "upstream": m.api, "provider": n} for n in providers]
    r += list(extra)
    r.append({"host": "public.test", "upstream": m.api})
    return r


class Stack:
    """with Stack(lambda m: {"epc": epc(m)}, limits=..., admin=True) as s: s.get("epc", "/x")

    Starts the mock providers, then the proxy with one route per provider. s.m is the mock,
    s.px the proxy, s.admin the admin port (or None)."""

    def __init__(self, providers, limits=None, admin=False, settings=None, routes=None,
                 log_level="info", env=None, start=True):
        self.providers_fn, self.limits, self.want_admin = providers, limits, admin
        self.settings, self.routes_fn, self.log_level = settings, routes, log_level
        self.extra_env, self.start = env or {}, start
        self.m = self.px = None
        self.admin = None

    def config(self):
        providers = self.providers_fn(self.m)
        routes = (self.routes_fn(self.m, providers) if self.routes_fn
                  else routes_for(self.m, providers))
        extra = {}
        if self.want_admin:
            self.admin = free_port()
            extra["admin_listen"] = "127.0.0.1:%d" % self.admin
        cfg = make_config(free_port(), routes, providers, self.limits, **extra)
        cfg["log"] = {"level": self.log_level, "format": "text"}
        return cfg

    def env(self):
        e = self.m.env()
        e.update(self.extra_env)
        return e

    def __enter__(self):
        self.m = MockProviders(settings=self.settings)
        try:
            self.cfg = self.config()
            if self.start:
                self.px = Proxy(self.cfg, env=self.env())
                if self.admin and not wait_port(self.admin, time.monotonic() + 10, self.px.proc):
                    raise AssertionError("the admin listener 127.0.0.1:%d never accepted: %s"
                                         % (self.admin, self.px.output()[-800:]))
        except BaseException:
            if self.px:
                self.px.stop()
            self.m.stop()
            raise
        return self

    def __exit__(self, *a):
        try:
            if self.px:
                self.px.stop()
        finally:
            self.m.stop()

    # requests through the proxy -----------------------------------------------------------
    def req(self, name, method="GET", path="/v1/loans", headers=None, body=None, timeout=None,
            **kw):
        return request(self.px.port, method, "http://%s%s" % (host(name), path),
                       headers=headers, body=body, timeout=timeout or (T + 5), **kw)

    def get(self, name, path="/v1/loans", **kw):
        return self.req(name, "GET", path, **kw)

    def ok(self, name, path="/v1/loans", method="GET", **kw):
        """A request that must succeed; returns the upstream's echo."""
        st, hdrs, body = self.req(name, method, path, **kw)
        assert st == 200, "%s %s via %s -> %d %r" % (method, path, name, st, body[:400])
        return json.loads(body)

    def admin_req(self, method, path):
        assert self.admin, "no admin listener configured"
        return request(self.admin, method, path)


def upstream_token(echo):
    """The bearer token the upstream received, from the API's echo."""
    auth = [v for k, v in echo["headers"] if k.lower() == "authorization"]
    assert len(auth) == 1, "upstream saw Authorization headers %r" % auth
    assert auth[0].startswith("Bearer "), "upstream Authorization %r" % auth[0]
    return auth[0][7:]


def parallel(n, fn, start_together=True, timeout=None):
    """Runs fn(i) in n threads; returns the results (or exceptions) in order. Bounded."""
    results = [None] * n
    barrier = threading.Barrier(n) if start_together else None

    def run(i):
        try:
            if barrier:
                barrier.wait(timeout=30)
            results[i] = fn(i)
        except BaseException as e:  # noqa: B902 - reported to the caller
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + (timeout or (60 if ASAN else 30))
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    alive = sum(t.is_alive() for t in threads)
    assert alive == 0, "%d of %d parallel requests still running after the deadline" % (alive, n)
    return results


def json_error(result):
    st, hdrs, body = result
    try:
        return json.loads(body)
    except ValueError:
        return None


@contextlib.contextmanager
def timed():
    t = {"start": time.monotonic()}
    yield t
    t["elapsed"] = time.monotonic() - t["start"]
