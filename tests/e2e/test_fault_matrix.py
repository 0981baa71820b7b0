"""Fault matrix: many seeded random scenarios driven through one proxy, several at once.

test_faults.py reaches each place where ownership is decided while something is outstanding
(a name resolution, a connect, a token mint, a 401 replay, a pending write) with one targeted
test. This test searches around them: each scenario picks a route (plain upstream, the same
through the /gw/ prefix, TLS upstream, an upstream whose name resolves slowly, one whose connect
fails at once, one whose name does not resolve, token routes whose provider is normal, slow,
failing or hanging, a token route whose API refuses the first token so that a replay happens),
a request (GET, or POST/PUT with a Content-Length or chunked body of 0-200 KB, sent whole or in
pieces with small pauses), an upstream behaviour (echo, large bodies, close-delimited, a reset
mid-response, a reset mid-upload, a close without an answer, a slow answer) and what the client
does at a random phase (finish and read everything; reset after the head, mid-body, after the
request, mid-response; half-close mid-body or after the request; close mid-response, sometimes
after stalling with a small receive buffer so that the proxy holds a pending write). Some
scenarios send a SIGHUP while their request is in flight (the same file rewritten; sometimes with
a changed provider, so a slot retires while its mint runs). Up to THREADS scenarios overlap.

A client that finishes normally must get what SPEC says; a misbehaving one has no required
answer. At the end the proxy must be alive, answer every route kind correctly, have no client
socket left open, no socket in CLOSE_WAIT, (release build) no more descriptors than at the start
beyond its pooled upstream connections, and stop with status 0. Under the ASan build the runner
fails the test on any sanitizer report in the proxy's log; this test also looks for one itself
so that its message carries the seed.

Replaying: AUTHPROXY_FAULT_SEED=N (default 1) picks the scenarios; every failure message names
the seed and the scenario numbers. AUTHPROXY_FAULT_ONLY=3,17 runs only those scenarios of the
seed (each is the same; its overlap with others is timing's), AUTHPROXY_FAULT_COUNT and
AUTHPROXY_FAULT_THREADS change how many run and how many at once, AUTHPROXY_FAULT_BUDGET_S
how long scenarios keep starting (for longer searches run the module by hand:
tests/run.py --one test_fault_matrix test_fault_matrix, with AUTHPROXY_BIN and AUTHPROXY_ASAN).
"""
import copy
import json
import os
import random
import select
import signal
import socket
import struct
import threading
import time

from harness import (ASAN, T, Conn, Mock, Proxy, assert_error, faults_env, free_port,
                     make_config, pattern_sha256, request, sha256, wait_until)
from tokenkit import MockProviders, rfc

SEED = int(os.environ.get("AUTHPROXY_FAULT_SEED") or 1)
COUNT = int(os.environ.get("AUTHPROXY_FAULT_COUNT") or (180 if ASAN else 240))
THREADS = int(os.environ.get("AUTHPROXY_FAULT_THREADS") or 6)
ONLY = [int(x) for x in (os.environ.get("AUTHPROXY_FAULT_ONLY") or "").split(",") if x.strip()]
# no scenario starts after this many seconds of the matrix (the runner's hard limit is 60 s)
LAUNCH_BUDGET_S = float(os.environ.get("AUTHPROXY_FAULT_BUDGET_S") or (24 if ASAN else 20))
RESP_T = T + 3.0  # a finished request's answer: the slowest legitimate one takes ~2.5 s
LIMITS = {
    "header_timeout_ms": 3000,
    "idle_timeout_ms": 4000,
    "upstream_connect_timeout_ms": 2500,  # includes the slow resolution (300-600 ms + queueing)
    "upstream_timeout_ms": 4000,
    "token_timeout_ms": 2000,
    "drain_ms": 2000,
}
MAX_BODY = 200 * 1024
MAX_DOWNLOAD = (1 if ASAN else 2) * 1024 * 1024
SANITIZER_PATTERNS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING"}

# route kinds (weights); "reject" is the normal provider with the API refusing a token once
KINDS = {"plain": 14, "gw": 5, "tls": 13, "slow": 12, "unreach": 7, "nx": 4,
         "tok_ok": 10, "tok_slow": 10, "tok_fail": 6, "tok_hang": 6, "reject": 11}
UPSTREAM_KINDS = ("plain", "gw", "tls", "slow")
TOKEN_KINDS = ("tok_ok", "tok_slow", "tok_fail", "tok_hang", "reject")
PROVIDER_OF = {"tok_ok": "ok", "reject": "ok", "tok_slow": "slow", "tok_fail": "fail",
               "tok_hang": "hang"}
GET_PATHS = {"/echo": 30, "/bytes": 18, "/chunked": 14, "/close": 7, "/sleep": 9, "/reset": 7,
             "/drop": 5}
BODY_PATHS = {"/upload": 42, "/echo": 22, "/sleep": 7, "/reset": 7, "/drop": 5,
              "/upload_reset": 10}
ACTIONS = {"complete": 44, "reset_after_head": 7, "reset_mid_body": 8, "reset_after_request": 11,
           "reset_mid_response": 9, "close_mid_response": 6, "halfclose_mid_body": 6,
           "halfclose_after_request": 9}


def wchoice(rng, weights):
    keys = sorted(weights)
    return rng.choices(keys, [weights[k] for k in keys])[0]


# ---- scenarios -------------------------------------------------------------------------------

def make_scenario(seed, i):
    """Scenario i of a seed: a dict, the same on every run."""
    rng = random.Random("%d/%d" % (seed, i))
    kind = wchoice(rng, KINDS)
    method = wchoice(rng, {"GET": 4, "POST": 4, "PUT": 2})
    if kind in UPSTREAM_KINDS:
        path = wchoice(rng, GET_PATHS if method == "GET" else BODY_PATHS)
    elif kind in ("unreach", "nx"):
        path = "/echo"
    else:
        path = "/v1/items/%d" % i
    query = ""
    if path in ("/bytes", "/chunked", "/close"):
        n = rng.choice([rng.randint(1, 65536), rng.randint(65537, MAX_DOWNLOAD)])
        query = "?n=%d" % n
    elif path == "/sleep":
        query = "?ms=%d" % rng.randint(50, 300)
    elif path == "/reset" and rng.random() < 0.5:
        query = "?chunked=1"
    size, framing = 0, None
    if method != "GET":
        if path == "/upload_reset":  # the mock resets after ~100 KB: more must be coming
            size = rng.randint(110000, MAX_BODY)
        else:
            size = rng.choice([0, rng.randint(1, 4096), rng.randint(4097, MAX_BODY)])
        framing = rng.choice(["length", "chunked"])
    action = wchoice(rng, ACTIONS)
    if action in ("reset_mid_body", "halfclose_mid_body") and size == 0:
        action = "reset_after_head"
    sc = {
        "i": i, "kind": kind, "method": method, "path": path, "query": query, "size": size,
        "framing": framing, "action": action,
        "pieces": 1 if rng.random() < 0.5 else rng.randint(2, 6),
        "pause_ms": rng.randint(0, 40),
        "wait_ms": rng.choice([0, rng.randint(1, 150), rng.randint(150, 700)]),
        "cut": rng.random(),                    # where mid-body / mid-response happens
        "stall_ms": rng.choice([0, 0, rng.randint(100, 600)]),
        "rcvbuf": rng.random() < 0.4,           # a small receive buffer: the proxy must queue
        "sighup": rng.random() < 0.07,
        "reload_change": rng.random() < 0.4,    # that reload also changes two providers
        "conn_close": rng.random() < 0.12,
        "follow_up": rng.random() < 0.25,       # another request on the connection afterwards
        "body_seed": rng.getrandbits(32),
        "run_seed": rng.getrandbits(32),
    }
    if kind == "tok_slow":
        sc["mint_delay"] = round(rng.uniform(0.2, 0.8), 2)
    elif kind == "tok_hang":
        sc["hang_s"] = round(rng.uniform(0.2, 3.0), 2)  # token_timeout_ms is 2 s
    elif kind == "reject":
        sc["reject"] = "early" if rng.random() < 0.75 else "revoke_all"
    return sc


def describe(sc):
    s = "#%d %s %s %s%s" % (sc["i"], sc["kind"], sc["method"], sc["path"], sc["query"])
    if sc["method"] != "GET":
        s += " body %d B %s" % (sc["size"], sc["framing"])
    if sc["pieces"] > 1:
        s += " in %d pieces" % sc["pieces"]
    s += ", %s" % sc["action"]
    if sc["action"] != "complete":
        s += " (wait %d ms, stall %d ms%s)" % (sc["wait_ms"], sc["stall_ms"],
                                               ", small rcvbuf" if sc["rcvbuf"] else "")
    for k in ("mint_delay", "hang_s", "reject"):
        if k in sc:
            s += ", %s %s" % (k, sc[k])
    if sc["sighup"]:
        s += ", SIGHUP%s" % (" with changed providers" if sc["reload_change"] else "")
    return s


def split(data, k, rng):
    if k <= 1 or len(data) < 2:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(k - 1, len(data) - 1)))
    out, prev = [], 0
    for c in cuts + [len(data)]:
        out.append(data[prev:c])
        prev = c
    return out


def chunked(body, rng):
    out, k = [], 0
    while k < len(body):
        n = min(len(body) - k, rng.choice([1, rng.randint(2, 512), rng.randint(513, 65536)]))
        out.append(b"%x\r\n" % n + body[k:k + n] + b"\r\n")
        k += n
    out.append(b"0\r\n\r\n")
    return b"".join(out)


# ---- sockets ---------------------------------------------------------------------------------

class Client(Conn):
    """A raw client; with rcvbuf a small receive buffer set before connecting."""

    def __init__(self, port, rcvbuf=None, timeout=None):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.settimeout(timeout or T)
            s.connect(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            s.close()
            raise
        self.sock = s
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def answer_waiting(self):
        if self.buf:
            return True
        try:
            r, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(r)

    def send_pieces(self, pieces, pause_s, stop_early=False, after_first=None):
        """Sends the pieces with pauses; True when all went. With stop_early it stops, as
        clients do, once an answer has arrived. Socket errors end the sending (False)."""
        for k, p in enumerate(pieces):
            if stop_early and k > 0 and self.answer_waiting():
                return False
            try:
                self.sock.sendall(p)
            except OSError:
                return False
            if k == 0 and after_first:
                after_first()
            if pause_s and k < len(pieces) - 1:
                time.sleep(pause_s)
        return True

    def abort(self):
        """Closes with an RST (SO_LINGER 0)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def drain(self, timeout, limit=None):
        """Reads until EOF, an error, timeout or limit bytes; returns the byte count."""
        deadline = time.monotonic() + timeout
        got = len(self.buf)
        self.buf.clear()
        while limit is None or got < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self.sock.settimeout(left)
                d = self.sock.recv(65536 if limit is None else max(1, min(65536, limit - got)))
            except OSError:
                break
            if not d:
                break
            got += len(d)
        return got

    def read_some(self, n, timeout):
        """Reads up to n bytes (at least one unless EOF/timeout) into buf, quietly."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < n and time.monotonic() < deadline:
            try:
                if not self._fill(deadline, min(65536, n - len(self.buf))):
                    return
            except OSError:
                return


# ---- the proxy's descriptors -----------------------------------------------------------------

def tcp_table():
    """inode -> (local port, remote port, state) for every TCP socket of this namespace."""
    out = {}
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fn) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for ln in lines:
            p = ln.split()
            if len(p) < 10:
                continue
            out[int(p[9])] = (int(p[1].rsplit(":", 1)[1], 16), int(p[2].rsplit(":", 1)[1], 16),
                              TCP_STATES.get(int(p[3], 16), p[3]))
    return out


def census(pid, proxy_ports, upstream_ports):
    """The proxy's descriptors by kind: total, client (accepted connections), upstream (to the
    mocks: pooled or active), listen, close_wait (any socket whose peer closed), other."""
    fds = []
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            fds.append(os.readlink("/proc/%d/fd/%s" % (pid, name)))
        except OSError:
            pass
    tcp = tcp_table()
    c = {"total": len(fds), "client": 0, "upstream": 0, "listen": 0, "close_wait": 0,
         "other_socket": 0, "not_socket": 0, "client_states": []}
    for link in fds:
        if not link.startswith("socket:["):
            c["not_socket"] += 1
            continue
        t = tcp.get(int(link[8:-1]))
        if t is None:
            c["other_socket"] += 1
            continue
        lport, rport, state = t
        if state == "CLOSE_WAIT":
            c["close_wait"] += 1
        if state == "LISTEN":
            c["listen"] += 1
        elif lport in proxy_ports:
            c["client"] += 1
            c["client_states"].append(state)
        elif rport in upstream_ports:
            c["upstream"] += 1
        else:
            c["other_socket"] += 1
    return c


def sanitizer_lines(text):
    lines = text.splitlines()
    for k, ln in enumerate(lines):
        if any(p in ln for p in SANITIZER_PATTERNS):
            return " / ".join(x.strip() for x in lines[k:k + 6])[:900]
    return None


# ---- the matrix ------------------------------------------------------------------------------

class Matrix:
    def __init__(self, up, tup, m, dead, gai_ms):
        self.up, self.tup, self.m, self.dead_port, self.gai_ms = up, tup, m, dead, gai_ms
        self.lock = threading.Lock()
        self.ctl_lock = threading.Lock()
        self.mint_delay = 0.3
        self.hangers = 0
        self.timers = []
        self.reloads = 0
        self.changed = False
        self.tolerated = {}
        self.outcomes = {}
        self.inflight = set()
        self.proxy_gone = None
        self.admin = free_port()
        providers = {
            "ok": rfc(m, path="/rfc/ok/token"),
            "slow": rfc(m, path="/rfc/slow/token", refresh_before_s=0),
            "hang": rfc(m, path="/rfc/hang/token", refresh_before_s=0),
            "fail": rfc(m, path="/rfc/fail/token"),
        }
        routes = [
            {"host": "plain.test", "upstream": "http://127.0.0.1:%d" % up.port},
            {"host": "tls.test", "upstream": "https://localhost:%d" % tup.port},
            {"host": "*.slow.test"},       # http://<name>:<port>: each name resolves slowly
            {"host": "*.nxdomain.test"},   # never resolves
            {"host": "unreach.test", "upstream": "http://127.0.0.1:%d" % dead},
        ]
        routes += [{"host": "%s.api.test" % p, "upstream": m.api, "provider": p}
                   for p in providers]
        routes.append({"path_prefix": "/gw/", "strip_prefix": True,
                       "upstream": "http://127.0.0.1:%d" % up.port})
        self.cfg = make_config(free_port(), routes, providers, LIMITS,
                               admin_listen="127.0.0.1:%d" % self.admin)
        env = m.env()
        env.update(faults_env(gai_ms=gai_ms, unreach_ports=[dead]))
        self.px = Proxy(self.cfg, env=env)

    # provider state ---------------------------------------------------------------------------
    def persistent(self):
        fail = {"rfc/fail": "500"}
        if self.hangers > 0:
            fail["rfc/hang"] = "hang"
        return {"fail": fail, "delay_s": {"rfc/slow": self.mint_delay}}

    def heal(self):
        """Releases hung mints; failing and slow providers stay so (one control call)."""
        with self.ctl_lock:
            self.m.control(heal=True, **self.persistent())

    def unhang(self):
        with self.ctl_lock:
            self.hangers -= 1
            self.m.control(heal=True, **self.persistent())

    def prepare(self, sc):
        k = sc["kind"]
        if k == "tok_slow":
            with self.ctl_lock:
                self.mint_delay = sc["mint_delay"]
                self.m.control(delay_s={"rfc/slow": self.mint_delay})
        elif k == "tok_hang":
            with self.ctl_lock:
                self.hangers += 1
                self.m.control(fail={"rfc/hang": "hang"})
            t = threading.Timer(sc["hang_s"], self.unhang)
            t.daemon = True
            with self.lock:
                self.timers.append(t)
            t.start()
        elif k == "reject":
            with self.ctl_lock:
                if sc["reject"] == "early":
                    self.m.control(api_reject_early=1)
                else:
                    self.m.control(revoke_all=True)

    def reload(self, change):
        """SIGHUP after rewriting the file (atomically: another reload may be reading it)."""
        with self.ctl_lock:
            if change:
                self.changed = not self.changed
            cfg = copy.deepcopy(self.cfg)
            if self.changed:  # a provider setting that changes nothing but the slot
                cfg["providers"]["slow"]["default_ttl_s"] = 301
                cfg["providers"]["hang"]["default_ttl_s"] = 301
            tmp = self.px.cfg_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(cfg, f, indent=2)
            os.replace(tmp, self.px.cfg_path)
            os.kill(self.px.pid, signal.SIGHUP)
            self.reloads += 1

    # requests ---------------------------------------------------------------------------------
    def target(self, sc, path=None):
        """(request target, Host) for the scenario's route."""
        k = sc["kind"]
        p = (path if path is not None else sc["path"] + sc["query"])
        if k == "plain":
            return "http://plain.test" + p, "plain.test"
        if k == "gw":
            return "/gw" + p, "gw.test"
        if k == "tls":
            return "http://tls.test" + p, "tls.test"
        if k == "slow":
            h = "s%d-%d.slow.test:%d" % (SEED, sc["i"], self.up.port)
            return "http://" + h + p, h
        if k == "nx":
            h = "s%d-%d.nxdomain.test:%d" % (SEED, sc["i"], self.up.port)
            return "http://" + h + p, h
        if k == "unreach":
            return "http://unreach.test" + p, "unreach.test"
        h = "%s.api.test" % PROVIDER_OF[k]
        return "http://" + h + p, h

    def build(self, sc, rng):
        tgt, host = self.target(sc)
        lines = ["%s %s HTTP/1.1" % (sc["method"], tgt), "Host: " + host,
                 "X-Fault-Scenario: %d/%d" % (SEED, sc["i"])]
        if sc["kind"] == "slow":
            # each slow name is its own pool key: no idle connection left per scenario
            lines.append("X-Mock-Close: 1")
        if sc["conn_close"]:
            lines.append("Connection: close")
        body = random.Random(sc["body_seed"]).randbytes(sc["size"])
        wbody = b""
        if sc["framing"] == "length":
            lines.append("Content-Length: %d" % len(body))
            wbody = body
        elif sc["framing"] == "chunked":
            lines.append("Transfer-Encoding: chunked")
            wbody = chunked(body, rng)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head, wbody, body

    def run(self, sc):
        """Runs one scenario; returns None or what went wrong (finished clients only)."""
        rng = random.Random(sc["run_seed"])
        self.prepare(sc)
        head, wbody, body = self.build(sc, rng)
        act = sc["action"]
        try:
            c = Client(self.px.port, rcvbuf=4096 if sc["rcvbuf"] else None, timeout=RESP_T)
        except ConnectionRefusedError:
            if not self.px.alive():
                self.proxy_gone = self.proxy_gone or sc["i"]
                return "the proxy is gone (exit %s)" % self.px.proc.poll()
            raise
        hup = (lambda: self.reload(sc["reload_change"])) if sc["sighup"] else None
        pause = sc["pause_ms"] / 1000.0
        wait = sc["wait_ms"] / 1000.0
        try:
            if act == "complete":
                return self.complete(sc, c, head + wbody, body, rng, pause, hup)
            if act == "reset_after_head":
                data = head
            elif act in ("reset_mid_body", "halfclose_mid_body"):
                data = head + wbody[:max(1, min(len(wbody) - 1, int(len(wbody) * sc["cut"])))]
            else:
                data = head + wbody
            c.send_pieces(split(data, sc["pieces"], rng), pause, after_first=hup)
            if act in ("reset_after_head", "reset_mid_body", "reset_after_request"):
                time.sleep(wait)
                c.abort()
            elif act in ("halfclose_mid_body", "halfclose_after_request"):
                time.sleep(wait)
                try:
                    c.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                c.drain(RESP_T)
                c.close()
            else:  # mid-response: some of the answer, maybe a stall, then away
                c.read_some(1 + int(sc["cut"] * 300000), min(RESP_T, 2.0 + wait))
                time.sleep(sc["stall_ms"] / 1000.0)
                if act == "reset_mid_response":
                    c.abort()
                else:
                    c.close()
            self.count(sc, act)
            return None
        finally:
            c.close()

    def complete(self, sc, c, wire, body, rng, pause, hup):
        all_sent = c.send_pieces(split(wire, sc["pieces"], rng), pause, stop_early=True,
                                 after_first=hup)
        try:
            r = c.read_response(sc["method"], timeout=RESP_T)
        except (OSError, AssertionError) as e:
            return "reading the answer: %s: %s" % (type(e).__name__, e)
        err = self.check(sc, r, c, body, all_sent)
        if err or r is None or sc["conn_close"] or not sc["follow_up"]:
            return err
        if (r.status != 200 or not r.complete or r.framing not in ("length", "chunked")
                or (r.header("connection") or "").lower() == "close" or c.eof):
            return None
        # the connection carries on: one more GET on it, after whatever the first one met
        path = "/echo" if sc["kind"] in UPSTREAM_KINDS else "/v1/again/%d" % sc["i"]
        tgt, host = self.target(sc, path)
        if not c.send_pieces([("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (tgt, host)).encode()],
                             0):
            return "the follow-up request could not be sent on a kept-alive connection"
        try:
            r2 = c.read_response("GET", timeout=RESP_T)
        except (OSError, AssertionError) as e:
            return "follow-up: %s: %s" % (type(e).__name__, e)
        sc2 = dict(sc, method="GET", path=path, query="", size=0, framing=None)
        err = self.check(sc2, r2, c, b"", True)
        return ("follow-up: " + err) if err else None

    def count(self, sc, outcome):
        with self.lock:
            key = "%s %s" % (sc["kind"], outcome)
            self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def tolerate(self, sc, why):
        with self.lock:
            self.tolerated[why] = self.tolerated.get(why, 0) + 1
        self.count(sc, "tolerated " + why)
        return None

    def check(self, sc, r, c, body, all_sent):
        """What SPEC says a client that finished its request gets."""
        kind, path = sc["kind"], sc["path"]
        if r is None:
            if path in ("/upload_reset", "/drop") and sc["size"] > 0 and not all_sent:
                # the upstream went away mid-upload and the proxy answered and closed while the
                # client was still sending: a client then may meet the reset before the 502
                # (as in test_streaming's test_upstream_resets_during_upload)
                return self.tolerate(sc, "reset before the 502 of a broken upload")
            return "no answer: the connection closed (sent all: %s)" % all_sent
        self.count(sc, str(r.status))
        try:
            if kind in ("unreach", "nx"):
                assert_error(r, 502, "upstream_unavailable")
                return None
            if kind == "tok_fail":
                assert_error(r, 503, "token_unavailable")
                return None
            if kind == "tok_hang" and r.status != 200:
                # the hang ends by the heal (the hung mint then fails: 503), by token_timeout_ms
                # (504) or, after either, by the backoff (503): which comes first is timing's
                if r.status == 504:
                    assert_error(r, 504, "token_timeout")
                else:
                    assert_error(r, 503, "token_unavailable")
                return None
            if kind in TOKEN_KINDS and r.status == 401:
                # A replay meets a second refusal only when another scenario's refusal (the
                # mock's api_reject_early counter and revoke_all are global) or a 2 s token's
                # expiry hits the replay too; the proxy then passes the 401 on, as SPEC says.
                # It must be the API's 401, not one of the proxy's errors.
                obj = r.json()
                assert obj.get("error") == "invalid_token" and "detail" not in obj, obj
                assert r.header("www-authenticate"), "401 without WWW-Authenticate"
                # and the API's log must show both tries of this path refused
                tries = [e["status"] for e in self.m.stats()["api"]["log"]
                         if e["path"] == sc["path"]]
                assert tries.count(401) >= 2, \
                    "a 401 reached the client without a replay (the API saw %r)" % tries
                return self.tolerate(sc, "401 on the replay too")
            if path == "/reset":
                assert r.status == 200, "the upstream had sent its head: %r" % r
                assert not r.complete, "a cut response was passed off as complete: %r" % r
                assert set(r.body) <= {ord("r")}, "body bytes differ: %r" % r.body[:100]
                assert c.eof or c.closed_within(T), "connection not closed after the cut"
                return None
            if path in ("/upload_reset", "/drop"):
                assert_error(r, 502, "upstream_unavailable")
                return None
            assert r.status == 200, "status %d: %r" % (r.status, r.body[:300])
            assert r.complete, "incomplete %s body (%d bytes)" % (r.framing, len(r.body))
            if path in ("/bytes", "/chunked", "/close"):
                n = int(sc["query"].split("=")[1])
                assert len(r.body) == n, "%d of %d pattern bytes" % (len(r.body), n)
                assert sha256(r.body) == pattern_sha256(n), "the body differs from the pattern"
            elif path == "/sleep":
                assert r.body == b"slept", r.body[:100]
            else:  # the echo (mock upstream or mock API)
                e = r.json()
                assert e["method"] == sc["method"], e["method"]
                assert e["body_length"] == len(body), \
                    "upstream got %d body bytes of %d" % (e["body_length"], len(body))
                assert e["body_sha256"] == sha256(body), "upstream got other body bytes"
            return None
        except (AssertionError, ValueError, KeyError) as e:
            return "%s: %s" % (type(e).__name__, e)

    # the whole run ----------------------------------------------------------------------------
    def run_all(self, scenarios):
        order = list(scenarios)
        failures = []
        nxt = [0]
        t0 = time.monotonic()

        def worker():
            while True:
                with self.lock:
                    if nxt[0] >= len(order) or self.proxy_gone is not None or \
                            time.monotonic() - t0 > LAUNCH_BUDGET_S:
                        return
                    sc = order[nxt[0]]
                    nxt[0] += 1
                    self.inflight.add(sc["i"])
                try:
                    err = self.run(sc)
                except Exception as e:  # noqa: B902 - a failure of this scenario, reported
                    err = "%s: %s" % (type(e).__name__, e)
                with self.lock:
                    self.inflight.discard(sc["i"])
                    if err:
                        failures.append((sc, err, sorted(self.inflight)))
                if err and not self.px.alive():
                    with self.lock:
                        if self.proxy_gone is None:
                            self.proxy_gone = sc["i"]

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
        for t in threads:
            t.start()
        deadline = t0 + LAUNCH_BUDGET_S + 4 * RESP_T
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        stuck = sorted(self.inflight)
        assert not any(t.is_alive() for t in threads), \
            "seed %d: scenarios %s still running after the deadline" % (SEED, stuck)
        with self.lock:
            timers = list(self.timers)
        for t in timers:
            t.join(5)
        return nxt[0], failures, time.monotonic() - t0


def final_checks(mx, px, up):
    """After the storm, sequentially: every route kind answers as SPEC says."""
    msgs = []

    def expect(label, fn):
        try:
            fn()
        except (AssertionError, OSError, ValueError, KeyError) as e:
            msgs.append("%s: %s: %s" % (label, type(e).__name__, e))

    def get(target, host, method="GET", body=None, headers=()):
        with Client(px.port, timeout=RESP_T) as c:
            hdrs = "".join("%s: %s\r\n" % kv for kv in headers)
            if body is not None:
                hdrs += "Content-Length: %d\r\n" % len(body)
            c.send(("%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (method, target, host, hdrs))
                   .encode() + (body or b""))
            return c.read_response(method, timeout=RESP_T)

    def echo_ok(target, host, body=b"", method="POST"):
        r = get(target, host, method, body)
        assert r is not None and r.status == 200, r
        e = r.json()
        assert e["body_sha256"] == sha256(body), "body differs"

    def plain():
        echo_ok("http://plain.test/upload", "plain.test", os.urandom(5000))

    def pattern(target, host, n):
        r = get(target, host)
        assert r is not None and r.status == 200 and r.complete, r
        assert sha256(r.body) == pattern_sha256(n), "the body differs from the pattern"

    expect("plain", plain)
    expect("plain /bytes", lambda: pattern("http://plain.test/bytes?n=300000", "plain.test",
                                           300000))
    expect("gateway", lambda: echo_ok("/gw/echo", "gw.test", b"gw"))
    expect("tls", lambda: echo_ok("http://tls.test/upload", "tls.test", os.urandom(3000)))
    expect("tls /chunked", lambda: pattern("http://tls.test/chunked?n=200000", "tls.test",
                                           200000))
    h = "final.slow.test:%d" % up.port
    expect("slow name", lambda: echo_ok("http://%s/echo" % h, h, b"slow"))
    expect("unreachable", lambda: assert_error(get("http://unreach.test/", "unreach.test"),
                                               502, "upstream_unavailable"))
    h = "final.nxdomain.test:%d" % up.port
    expect("no such name", lambda: assert_error(get("http://%s/" % h, h), 502,
                                                "upstream_unavailable"))
    expect("token ok", lambda: echo_ok("http://ok.api.test/x", "ok.api.test",
                                       os.urandom(20000)))

    def replay():
        before = mx.m.stats()["api"]["unauthorized"]
        mx.m.control(api_reject_early=1)
        body = os.urandom(30000)
        echo_ok("http://ok.api.test/replay", "ok.api.test", body, method="PUT")
        assert mx.m.stats()["api"]["unauthorized"] == before + 1, "the API refused nothing"

    expect("401 replay", replay)
    expect("token slow", lambda: echo_ok("http://slow.api.test/x", "slow.api.test", b"s"))

    def hang_healed():
        # after its failures the provider may be in backoff (up to a minute): a forced mint
        # ends that, then the route serves
        st, _, data = request(mx.admin, "POST", "/tokens/hang/refresh", timeout=RESP_T)
        assert st == 200, "forced mint of the healed provider: %d %r" % (st, data[:300])
        echo_ok("http://hang.api.test/x", "hang.api.test", b"h")

    expect("token hang, healed", hang_healed)
    expect("token failing", lambda: assert_error(get("http://fail.api.test/x", "fail.api.test"),
                                                 503, "token_unavailable"))
    return msgs


def test_fault_matrix():
    seed_note = "seed %d (AUTHPROXY_FAULT_SEED=%d)" % (SEED, SEED)
    gai_ms = random.Random(SEED).randint(300, 600)
    dead = free_port()
    up = Mock()
    tup = m = mx = None
    try:
        tup = Mock(tls=True)
        m = MockProviders(settings={"lifetime_s": {"rfc/slow": 2, "rfc/hang": 2},
                                    "fail": {"rfc/fail": "500"},
                                    "delay_s": {"rfc/slow": 0.3}})
        mx = Matrix(up, tup, m, dead, gai_ms)
        px = mx.px
        proxy_ports = {px.port, mx.admin}
        upstream_ports = {up.port, tup.port, m.port, m.api_port}

        def cen():
            return census(px.pid, proxy_ports, upstream_ports)

        # warm-up: every route once, so the baseline has its pools and the token cache
        warm = final_checks(mx, px, up)
        assert not warm, "%s: before any fault: %s" % (seed_note, " | ".join(warm))
        assert wait_until(lambda: cen()["client"] == 0, 10), "warm-up left %r" % cen()
        base = cen()

        if ONLY:
            scenarios = [make_scenario(SEED, i) for i in ONLY]
        else:
            scenarios = [make_scenario(SEED, i) for i in range(COUNT)]
        started, failures, dt = mx.run_all(scenarios)
        san = sanitizer_lines(px.output())
        if not px.alive() or san:
            gone = [describe(sc) for sc, _, _ in failures[:3]]
            raise AssertionError(
                "%s: the proxy %s during the matrix (first failing scenario %s, in flight "
                "then %s): %s; log %s" % (
                    seed_note, "died (exit %s)" % px.proc.poll() if not px.alive()
                    else "reported a sanitizer error", mx.proxy_gone,
                    failures[0][2] if failures else "?", san or px.output()[-600:],
                    px.log_path) + (" | failing: " + " | ".join(gone) if gone else ""))
        if failures:
            first = ["%s: %s (overlapping %s)" % (describe(sc), err, infl[:8])
                     for sc, err, infl in failures[:4]]
            raise AssertionError("%s: %d of %d scenarios failed: %s | replay one with "
                                 "AUTHPROXY_FAULT_SEED=%d AUTHPROXY_FAULT_ONLY=%s" % (
                                     seed_note, len(failures), started, " | ".join(first),
                                     SEED, ",".join(str(sc["i"]) for sc, _, _ in failures[:8])))
        assert ONLY or started >= min(COUNT, 40), \
            "%s: only %d scenarios started within %.0f s" % (seed_note, started, LAUNCH_BUDGET_S)

        mx.heal()
        assert px.alive(), "%s: the proxy died after the matrix" % seed_note
        msgs = final_checks(mx, px, up)
        assert not msgs, "%s: after %d scenarios: %s" % (seed_note, started, " | ".join(msgs))

        # descriptors: no client socket left, nothing half-closed held, and (release) no more
        # than at the start beyond the grown upstream pool (at most a few per upstream, as many
        # as ran at once)
        pool_max = 4 * (THREADS + 2)

        def clean():
            n = cen()
            if n["client"] or n["close_wait"] or n["upstream"] > pool_max:
                return False
            grown = max(0, n["upstream"] - base["upstream"])
            return ASAN or n["total"] <= base["total"] + grown + 4
        if not wait_until(clean, 15, step=0.2):
            raise AssertionError("%s: descriptors after %d scenarios: %r, at the start %r "
                                 "(%d reloads)" % (seed_note, started, cen(), base, mx.reloads))
        if mx.reloads:
            assert "configuration reloaded" in px.output(), "%s: no reload happened" % seed_note
        assert "reload failed" not in px.output(), px.output()[-600:]
        print("fault matrix %s: %d scenarios in %.1f s, %d reloads, gai %d ms; tolerated %r; "
              "outcomes %r; fds %r -> %r" % (seed_note, started, dt, mx.reloads, gai_ms,
                                             mx.tolerated, mx.outcomes, base, cen()))
        rc = px.stop()
        san = sanitizer_lines(px.output())
        assert not san, "%s: sanitizer report: %s (log %s)" % (seed_note, san, px.log_path)
        assert rc == 0, "%s: exit status %r: %s" % (seed_note, rc, px.output()[-600:])
    finally:
        if mx is not None:
            mx.px.stop()
        for p in (m, tup, up):
            if p is not None:
                p.stop()
