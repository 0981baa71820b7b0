"""Helpers for the authproxy end-to-end tests (Python 3 standard library only).

Environment (set by tests/run.py; sensible defaults when a test module is run by hand):
  AUTHPROXY_BIN      proxy binary (default build/authproxy)
  AUTHPROXY_ASAN     "1": sanitizer build; heavy tests shrink and skip RSS checks
  AUTHPROXY_LOGDIR   where proxy/mock stderr logs go (the runner scans proxy-*.log)
  AUTHPROXY_CERTDIR  where the test CA and certificates live (generated once per run)

Every wait is bounded; every process started here is stopped by its pid.
"""
import hashlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import mock_upstream  # noqa: E402  (pattern helpers)

BIN = os.environ.get("AUTHPROXY_BIN") or os.path.join(ROOT, "build", "authproxy")
if not os.path.isabs(BIN):
    BIN = os.path.join(ROOT, BIN)
ASAN = os.environ.get("AUTHPROXY_ASAN") == "1"
VIA = "authproxy-test"
# generous per-read timeout for responses; sanitizer builds are slower
T = 10.0 if ASAN else 5.0
MiB = 1 << 20
GiB = 1 << 30
RSS_LIMIT_KB = 64 * 1024

BLOCK_SIZE = mock_upstream.BLOCK
pattern_block = mock_upstream.pattern_block
pattern_sha256 = mock_upstream.pattern_sha256


def heavy(fn):
    """Marks a test as heavy: longer hard timeout; small sizes, no RSS checks under ASan."""
    fn.heavy = True
    return fn


def heavy_size(full):
    return 64 * MiB if ASAN else full


def logdir():
    d = os.environ.get("AUTHPROXY_LOGDIR")
    if not d:
        d = tempfile.mkdtemp(prefix="authproxy-e2e-logs-")
        os.environ["AUTHPROXY_LOGDIR"] = d
    os.makedirs(d, exist_ok=True)
    return d


_seq = [0]


def _next_name(prefix, ext="log"):
    _seq[0] += 1
    return os.path.join(logdir(), "%s-%d-%d.%s" % (prefix, os.getpid(), _seq[0], ext))


# ---------------------------------------------------------------------------------------------
# ports

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def closed_port():
    """A port where nothing listens (bound then released; nobody else binds 127.0.0.1 here)."""
    return free_port()


def wait_port(port, deadline, proc=None):
    """Waits until 127.0.0.1:port accepts; False on deadline or when proc has exited."""
    for _ in range(10000):
        if time.monotonic() > deadline:
            return False
        if proc is not None and proc.poll() is not None:
            return False
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
            s.close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


# ---------------------------------------------------------------------------------------------
# processes

def stop_process(proc, term_wait=8.0):
    """SIGTERM, then SIGKILL after term_wait seconds. Returns the exit status (None if unknown)."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=term_wait)
        except subprocess.TimeoutExpired:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    return proc.returncode


# ---------------------------------------------------------------------------------------------
# certificates

def _openssl(args, cwd):
    r = subprocess.run(["openssl"] + args, cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args), r.stderr.decode()[-500:]))


def generate_certs(d):
    """Test CA; server cert signed by it (DNS:localhost, IP:127.0.0.1); a self-signed cert
    (not from the CA); a CA-signed cert for another name (DNS:wrong.example)."""
    os.makedirs(d, exist_ok=True)
    if os.path.exists(os.path.join(d, "done")):
        return
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(["req", "-x509"] + ec + ["-keyout", "ca.key", "-out", "ca.pem", "-days", "3",
                                      "-subj", "/CN=authproxy e2e test CA",
                                      "-addext", "basicConstraints=critical,CA:TRUE",
                                      "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)

    def leaf(name, san):
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                    "extendedKeyUsage=serverAuth\nsubjectAltName=%s\n"
                    "authorityKeyIdentifier=keyid\n" % san)
        _openssl(["req", "-new"] + ec + ["-keyout", name + ".key", "-out", name + ".csr",
                                         "-subj", "/CN=" + name], d)
        _openssl(["x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                  "-CAcreateserial", "-days", "3", "-extfile", name + ".ext",
                  "-out", name + ".pem"], d)

    leaf("server", "DNS:localhost,IP:127.0.0.1")
    leaf("wronghost", "DNS:wrong.example")
    _openssl(["req", "-x509"] + ec + ["-keyout", "selfsigned.key", "-out", "selfsigned.pem",
                                      "-days", "3", "-subj", "/CN=localhost",
                                      "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], d)
    open(os.path.join(d, "done"), "w").close()


def certs():
    d = os.environ.get("AUTHPROXY_CERTDIR")
    if not d:
        d = tempfile.mkdtemp(prefix="authproxy-e2e-certs-")
        os.environ["AUTHPROXY_CERTDIR"] = d
    generate_certs(d)
    j = lambda n: os.path.join(d, n)  # noqa: E731
    return {"ca": j("ca.pem"), "cert": j("server.pem"), "key": j("server.key"),
            "selfsigned_cert": j("selfsigned.pem"), "selfsigned_key": j("selfsigned.key"),
            "wronghost_cert": j("wronghost.pem"), "wronghost_key": j("wronghost.key")}


# ---------------------------------------------------------------------------------------------
# mock upstream

def ready_line(proc, timeout=15):
    """The first line a child prints on stdout (its "PORT ..." announcement), waited on for at
    most timeout seconds; b"" or a partial line when it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            ch = os.read(proc.stdout.fileno(), 64)
            if not ch:
                break
            line += ch
    return line


class Process:
    """A child process with a log file: stopped by its pid, usable as a context manager."""

    def stop(self):
        stop_process(self.proc, term_wait=3)
        try:
            self.proc.stdout.close()
        except Exception:
            pass
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


class Mock(Process):
    """The mock upstream in its own process. tls: None, True (CA-signed localhost cert),
    or a (cert, key) pair."""

    def __init__(self, tls=None, token=None):
        args = [sys.executable, os.path.join(HERE, "mock_upstream.py"), "--port", "0"]
        if tls is True:
            c = certs()
            tls = (c["cert"], c["key"])
        if tls:
            args += ["--tls", tls[0], tls[1]]
        if token:
            args += ["--token", token]
        self.tls = bool(tls)
        self.log_path = _next_name("mock")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.port = None
        try:
            line = ready_line(self.proc)
            if not line.startswith(b"PORT "):
                raise AssertionError("mock upstream did not start: %r" % line)
            self.port = int(line.split()[1])
        except BaseException:
            self.stop()
            raise

    @property
    def scheme(self):
        return "https" if self.tls else "http"

    def url(self, host="127.0.0.1"):
        return "%s://%s:%d" % (self.scheme, host, self.port)

    def stats(self):
        if self.tls:
            import ssl
            # the mock may serve an untrusted certificate on purpose: no verification here
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            c = http.client.HTTPSConnection("localhost", self.port, timeout=T, context=ctx)
        else:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=T)
        try:
            c.request("GET", "/__stats")
            r = c.getresponse()
            data = r.read()
            assert r.status == 200, "mock stats: %d" % r.status
            st = json.loads(data)
            if self.tls:  # our own stats connection did a handshake
                st["tls_handshakes"] -= 1
            return st
        finally:
            c.close()

# ---------------------------------------------------------------------------------------------
# proxy

DEFAULT_LIMITS = {
    "header_timeout_ms": 5000,
    "idle_timeout_ms": 10000,
    "upstream_connect_timeout_ms": 2000,
    "upstream_timeout_ms": 10000,
    "token_timeout_ms": 3000,
    "drain_ms": 1000,
}


def make_config(port, routes, providers=None, limits=None, **extra):
    lim = dict(DEFAULT_LIMITS)
    lim.update(limits or {})
    cfg = {
        "listen": ["127.0.0.1:%d" % port],
        "workers": 1,
        "via": VIA,
        "log": {"level": "info", "format": "text"},
        "tls": {"ca_file": certs()["ca"]},
        "limits": lim,
        "providers": providers or {},
        "routes": routes,
    }
    cfg.update(extra)
    return cfg


def plain_route(mock, host="plain.test"):
    return {"host": host, "upstream": "http://127.0.0.1:%d" % mock.port}


def tls_route(mock, host="tls.test"):
    return {"host": host, "upstream": "https://localhost:%d" % mock.port}


def gw_route(mock, prefix="/gw/"):
    return {"path_prefix": prefix, "strip_prefix": True,
            "upstream": "http://127.0.0.1:%d" % mock.port}


def write_config(cfg):
    path = _next_name("config", "json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def asan_env(env):
    env = dict(env)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    return env


FAULTS_LIB = os.path.join(ROOT, "build", "libfaults.so")


def faults_env(gai_ms=None, unreach_ports=()):
    """Environment for a proxy under tests/faults/faults.c: names ending in .slow.test resolve
    to 127.0.0.1 after gai_ms, .nxdomain.test names fail, connects to 127.0.0.1 on
    unreach_ports fail at once with ENETUNREACH."""
    if not os.path.exists(FAULTS_LIB):
        raise AssertionError("%s does not exist (make build/libfaults.so)" % FAULTS_LIB)
    e = asan_env({})
    # the sanitizer runtime need not come first when the shim is preloaded
    e["ASAN_OPTIONS"] += ":verify_asan_link_order=0"
    e["LD_PRELOAD"] = FAULTS_LIB
    if gai_ms is not None:
        e["AUTHPROXY_FAULT_GAI_MS"] = str(int(gai_ms))
    if unreach_ports:
        e["AUTHPROXY_FAULT_UNREACH_PORTS"] = ",".join(str(p) for p in unreach_ports)
    return e


def run_cli(args, env=None, timeout=30):
    """Runs the binary to completion; returns CompletedProcess with text stdout/stderr.
    stderr is also appended to a proxy-*.log so the runner scans it for sanitizer reports."""
    e = asan_env(os.environ)
    if env:
        e.update(env)
    r = subprocess.run([BIN] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, env=e, timeout=timeout)
    with open(_next_name("proxy-cli"), "wb") as f:
        f.write(r.stderr)
    r.stdout = r.stdout.decode("utf-8", "replace")
    r.stderr = r.stderr.decode("utf-8", "replace")
    return r


class Proxy:
    """authproxy -c <cfg> in its own process, stderr to a log file, waited on until it accepts.

    cfg: a dict from make_config (its first listen address gives the port) or a path.
    """

    def __init__(self, cfg, env=None, args=(), wait=True, port=None):
        if not os.path.exists(BIN):
            raise AssertionError("proxy binary %s does not exist (not built?)" % BIN)
        if isinstance(cfg, dict):
            self.cfg = cfg
            self.port = int(cfg["listen"][0].rsplit(":", 1)[1])
            self.cfg_path = write_config(cfg)
        else:
            self.cfg = None
            self.port = port
            self.cfg_path = cfg
        e = asan_env(os.environ)
        if env:
            e.update(env)
        self.log_path = _next_name("proxy")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([BIN, "-c", self.cfg_path] + list(args),
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=e)
        self.pid = self.proc.pid
        self.returncode = None
        if wait:
            try:
                ok = wait_port(self.port, time.monotonic() + (30 if ASAN else 15), self.proc)
                if not ok:
                    raise AssertionError("proxy did not start listening on %d (exit %s): %s"
                                         % (self.port, self.proc.poll(), self.output()[-1500:]))
            except BaseException:
                self.stop()
                raise

    def output(self):
        """Everything the proxy wrote to stdout/stderr so far."""
        try:
            if not self.log.closed:
                self.log.flush()
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def status_field(self, name):
        """A field of /proc/<pid>/status in kB (VmHWM, VmRSS)."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        raise AssertionError("no %s in /proc/%d/status" % (name, self.pid))

    def alive(self):
        return self.proc.poll() is None

    def stop(self, term_wait=8.0):
        if self.returncode is None:
            self.returncode = stop_process(self.proc, term_wait)
        try:
            self.log.close()
        except Exception:
            pass
        return self.returncode

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


# ---------------------------------------------------------------------------------------------
# raw sockets

class Response:
    def __init__(self):
        self.version = None
        self.status = None
        self.reason = None
        self.headers = []
        self.body = b""
        self.complete = False  # the body's framing said it ended (not cut by a close)
        self.framing = None    # "length", "chunked", "close", "none"
        self.interim = []      # 1xx responses seen before

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header_names(self):
        return [k.lower() for k, _ in self.headers]

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Response %s %s headers=%r body=%r%s>" % (
            self.status, self.reason, self.headers, self.body[:300],
            "" if self.complete else " INCOMPLETE")


class Conn:
    """A raw client connection with its own read buffer (for pipelining)."""

    def __init__(self, port, host="127.0.0.1", timeout=None):
        self.sock = socket.create_connection((host, port), timeout=timeout or T)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _fill(self, deadline, size=1 << 20):
        """Reads more bytes; returns False on EOF/reset. Raises socket.timeout at deadline."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline reached")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(size)
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, marker, deadline, limit=1 << 20):
        for _ in range(1 << 20):
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[: i + len(marker)])
                del self.buf[: i + len(marker)]
                return out
            if len(self.buf) > limit:
                raise AssertionError("no %r within %d bytes" % (marker, limit))
            if not self._fill(deadline):
                return None
        return None

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            if not self._fill(deadline):
                break
        take = min(n, len(self.buf))
        out = bytes(self.buf[:take])
        del self.buf[:take]
        return out

    def read_response(self, method="GET", timeout=None, keep_interim=False):
        """Reads one response (skipping 1xx unless keep_interim). Returns Response, or None if
        the connection closed before any byte of a response head arrived."""
        deadline = time.monotonic() + (timeout or T)
        r = Response()
        while True:
            head = self.read_until(b"\r\n\r\n", deadline)
            if head is None:
                if self.buf:
                    raise AssertionError("connection closed inside a response head: %r"
                                         % bytes(self.buf[:500]))
                return None
            lines = head[:-4].split(b"\r\n")
            parts = lines[0].decode("latin-1").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/"):
                raise AssertionError("bad status line %r" % lines[0][:200])
            version, status = parts[0], int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            headers = []
            for ln in lines[1:]:
                k, sep, v = ln.decode("latin-1").partition(":")
                assert sep, "bad response header line %r" % ln
                headers.append((k, v.strip(" \t")))
            if 100 <= status < 200 and status != 101:
                r.interim.append((status, headers))
                if keep_interim:
                    r.version, r.status, r.reason, r.headers = version, status, reason, headers
                    r.complete, r.framing = True, "none"
                    return r
                continue
            r.version, r.status, r.reason, r.headers = version, status, reason, headers
            break
        te = ",".join(r.header_all("transfer-encoding")).lower()
        cl = r.header_all("content-length")
        if method == "HEAD" or status in (204, 304):
            r.framing, r.complete = "none", True
        elif "chunked" in te:
            r.framing = "chunked"
            body = bytearray()
            while True:
                line = self.read_until(b"\r\n", deadline)
                if line is None:
                    break
                size = int(line[:-2].split(b";")[0].strip(), 16)
                if size == 0:
                    # trailers until the empty line
                    ok = True
                    while True:
                        t = self.read_until(b"\r\n", deadline)
                        if t is None:
                            ok = False
                            break
                        if t == b"\r\n":
                            break
                    r.complete = ok
                    break
                data = self.read_exact(size, deadline)
                body += data
                if len(data) < size:
                    break
                crlf = self.read_exact(2, deadline)
                if crlf != b"\r\n":
                    if len(crlf) < 2:
                        break
                    raise AssertionError("chunk not followed by CRLF: %r" % crlf)
            r.body = bytes(body)
        elif cl:
            assert len(set(cl)) == 1, "several Content-Length values in response: %r" % cl
            n = int(cl[0])
            r.framing = "length"
            r.body = self.read_exact(n, deadline)
            r.complete = len(r.body) == n
        else:
            r.framing = "close"
            while self._fill(deadline):
                pass
            r.body = bytes(self.buf)
            self.buf.clear()
            r.complete = True
        return r

    def closed_within(self, timeout):
        """True if the peer closes (EOF or reset) within timeout with no further data; raises
        if unexpected data arrives."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except socket.timeout:
            return False
        except OSError:
            return True
        if self.buf:
            raise AssertionError("unexpected data before close: %r" % bytes(self.buf[:300]))
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def raw_exchange(port, data, method="GET", timeout=None):
    """Sends data on a new connection and reads one response."""
    with Conn(port) as c:
        c.send(data)
        return c.read_response(method=method, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# http.client helpers

def request(port, method, url, headers=None, body=None, timeout=None, encode_chunked=False):
    """One request through the proxy with http.client. url is absolute (forward proxy) or a
    path (gateway). Returns (status, headers list, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout or T)
    try:
        c.request(method, url, body=body, headers=headers or {}, encode_chunked=encode_chunked)
        r = c.getresponse()
        data = r.read()
        return r.status, r.getheaders(), data
    finally:
        c.close()


def get_json(port, url, headers=None, method="GET", body=None):
    st, hdrs, data = request(port, method, url, headers=headers, body=body)
    assert st == 200, "%s %s -> %d %r" % (method, url, st, data[:300])
    return json.loads(data)


def hdr(headers, name):
    """First value of a header in a list of (name, value) or [name, value]."""
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None


def hdr_all(headers, name):
    return [v for k, v in headers if k.lower() == name.lower()]


def assert_error(resp_or_tuple, status, code):
    """Checks an authproxy error: status, JSON content type, {"error": code, "detail": str}.
    Returns the parsed body."""
    if isinstance(resp_or_tuple, Response):
        st, headers, body = resp_or_tuple.status, resp_or_tuple.headers, resp_or_tuple.body
    elif resp_or_tuple is None:
        raise AssertionError("expected %d %s, got no response (connection closed)"
                             % (status, code))
    else:
        st, headers, body = resp_or_tuple
    assert st == status, "expected status %d (%s), got %d: %r" % (status, code, st, body[:400])
    ct = hdr(headers, "content-type") or ""
    assert ct.split(";")[0].strip().lower() == "application/json", \
        "error content-type %r (expected application/json)" % ct
    try:
        obj = json.loads(body.decode("utf-8"))
    except ValueError:
        raise AssertionError("error body is not JSON: %r" % body[:400])
    assert isinstance(obj, dict), "error body not an object: %r" % obj
    assert obj.get("error") == code, "expected error %r, got %r" % (code, obj)
    assert isinstance(obj.get("detail"), str) and obj["detail"], "error without detail: %r" % obj
    return obj


def read_pattern(sock_reader, n, deadline):
    """Reads n bytes from a Conn and checks them against the pattern; returns bytes read."""
    got = 0
    k = 0
    block = bytearray(mock_upstream.BLOCK)
    mv = memoryview(block)
    while got < n:
        want = min(n - got, mock_upstream.BLOCK)
        filled = 0
        if sock_reader.buf:
            take = min(want, len(sock_reader.buf))
            block[:take] = sock_reader.buf[:take]
            del sock_reader.buf[:take]
            filled = take
        s = sock_reader.sock
        while filled < want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timeout after %d of %d bytes" % (got + filled, n))
            s.settimeout(left)
            try:
                r = s.recv_into(mv[filled:want])
            except ConnectionResetError:
                r = 0
            if r == 0:
                return got + filled
            filled += r
        exp = pattern_block(k)
        # bytearray == bytes is a memcmp; memoryview comparison is 100x slower
        same = (block == exp) if want == len(block) else (block[:want] == exp[:want])
        if not same:
            for i in range(want):
                if block[i] != exp[i]:
                    raise AssertionError("body differs from the pattern at byte %d" % (got + i))
        got += want
        k += 1
    return got


def pattern_bytes(n):
    out = bytearray()
    k = 0
    while len(out) < n:
        out += pattern_block(k)
        k += 1
    return bytes(out[:n])


def sha256(b):
    return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------------------------------------
# the usual set-up: one mock upstream, one proxy with plain.test + /gw/ routes to it

class proxied:
    """with proxied(limits={...}) as (up, px): ...

    routes: None for [plain.test, /gw/], or a callable up -> list of routes.
    tls: start the mock with TLS (CA-signed localhost certificate).
    """

    def __init__(self, limits=None, routes=None, providers=None, tls=False, env=None,
                 mock_token=None, **extra):
        self.limits, self.routes, self.providers = limits, routes, providers
        self.tls, self.env, self.mock_token, self.extra = tls, env, mock_token, extra
        self.up = self.px = None

    def __enter__(self):
        self.up = Mock(tls=True if self.tls else None, token=self.mock_token)
        try:
            port = free_port()
            routes = (self.routes(self.up) if self.routes
                      else [plain_route(self.up), gw_route(self.up)])
            extra = dict(self.extra)
            listen_extra = extra.pop("listen_extra", None)
            cfg = make_config(port, routes, self.providers, self.limits, **extra)
            if listen_extra:
                cfg["listen"].append(listen_extra)
            self.px = Proxy(cfg, env=self.env)
        except BaseException:
            self.up.stop()
            raise
        return self.up, self.px

    def __exit__(self, *a):
        try:
            if self.px:
                self.px.stop()
        finally:
            self.up.stop()


def curl(args, timeout=20):
    """Runs curl with no proxy settings from the environment; returns CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(["curl", "-sS", "--max-time", str(int(timeout) - 2)] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          timeout=timeout)


def wait_until(pred, timeout, step=0.05):
    """Polls pred() until true or timeout; returns its last value."""
    deadline = time.monotonic() + timeout
    v = pred()
    for _ in range(100000):
        if v or time.monotonic() > deadline:
            break
        time.sleep(step)
        v = pred()
    return v
