#!/usr/bin/env python3
"""authproxy side-by-side benchmark: direct, nginx, HAProxy, the floor relay and authproxy doing the
same job (attach `Authorization: Bearer <token>` and forward to an nginx backend that answers 401
without it). Run through bench/run.sh (which builds the floor relay); `bench/run.sh --help`.

Placement: wrk, curl, the benchmark's own clients, the backend and the mock token endpoint on the
client CPU (0), the proxy under test alone on the proxy CPU (1). Every process is started here,
in the foreground, and stopped by its pid; configs, logs and data live in one temp dir.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import secrets
import shlex
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
CLK_TCK = os.sysconf("SC_CLK_TCK")
ALL_CONTENDERS = ["direct", "nginx", "haproxy", "floor", "authproxy"]
ALL_EXTRAS = ["idle", "big", "burst", "replay", "slowmint"]
# row name -> (mode, path, label)
ROWS = {
    "rev64": ("reverse", "/64", "reverse 64 B"),
    "rev16k": ("reverse", "/16k", "reverse 16 KiB"),
    "fwd64": ("forward", "/64", "forward 64 B"),
    "fwd16k": ("forward", "/16k", "forward 16 KiB"),
}
FWD_HOST = "bench.local"
SLOW_HOST = "slow.local"  # the slowmint measurement's route (provider `slow`)
SLOW_TTL_MS = 3600000     # provider `slow` reads expires_in in ms: 1 h outside the measurement
SLOWMINT_TARGET = 1.10    # p99 during a slow mint / p99 without, at most


def say(*a):
    print(*a, flush=True)


def warn(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def which(name):
    p = shutil.which(name)
    if p:
        return p
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


# ---------------------------------------------------------------------------------------------
# /proc helpers: a process and its descendants
# ---------------------------------------------------------------------------------------------

def _stat_fields(pid):
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()  # fields from "state" (field 3) on


def proc_tree(pid):
    """pid and all its descendants (scan of /proc)."""
    parents = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            parents[int(d)] = int(_stat_fields(int(d))[1])
        except (OSError, ValueError, IndexError):
            pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        todo.extend(c for c, pp in parents.items() if pp == p)
    return out


def cpu_ticks(pids):
    t = 0
    for p in pids:
        try:
            f = _stat_fields(p)
            t += int(f[11]) + int(f[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return t


def status_kb(pids, *fields):
    """The given /proc/<pid>/status fields (kB), each summed over pids."""
    t = dict.fromkeys(fields, 0)
    for p in pids:
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    k = line.split(":", 1)[0]
                    if k in t:
                        t[k] += int(line.split()[1])
        except OSError:
            pass
    return tuple(t[k] for k in fields)


def mem_kb(pids):
    """(VmRSS, VmHWM) summed over pids, in kB."""
    return status_kb(pids, "VmRSS", "VmHWM")


def anon_kb(pids):
    """RssAnon summed over pids, in kB: private memory; the rest of VmRSS is file-backed
    (shared libraries' pages, shared with every process that maps them)."""
    return status_kb(pids, "RssAnon")[0]


def reset_peak(pids):
    """Resets VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    for p in pids:
        try:
            with open("/proc/%d/clear_refs" % p, "w") as f:
                f.write("5")
        except OSError:
            pass


def machine_cpu():
    """(busy, total) ticks of the whole machine: busy = user + nice + system."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return v[0] + v[1] + v[2], sum(v)


def children_ticks():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * CLK_TCK


def run_bounded(cmd, timeout, env=None, merge=True):
    """subprocess.run for `timeout ... cmd`: on an interruption, SIGTERM reaches `timeout`, which
    passes it on to its child (SIGKILL on `timeout` would orphan the child).
    Returns (rc, stdout, stderr) as text."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT if merge else subprocess.PIPE, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException:
        p.terminate()
        try:
            p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
        raise
    dec = lambda b: (b or b"").decode("utf-8", "replace")  # noqa: E731
    return p.returncode, dec(out), dec(err)


def pick_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_port(port, proc=None, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and not proc.alive():
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------

class Proc:
    """A process started in the foreground; stopped by its pid (and its children by theirs)."""

    def __init__(self, name, argv, log, env=None, cpu=None, cwd=None):
        self.name, self.log = name, log
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + argv  # taskset execs: same pid
        self.argv = argv
        self.logf = open(log, "ab")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                  stderr=subprocess.STDOUT, env=env, cwd=cwd)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def tree(self):
        return proc_tree(self.pid) if self.alive() else []

    def stop(self, sig=signal.SIGTERM, grace=5.0):
        kids = [p for p in self.tree() if p != self.pid]
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.p.wait(5)
        for k in kids:  # e.g. nginx workers left behind by a killed master
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.logf.close()

    def log_tail(self, n=15):
        try:
            with open(self.log, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""


# ---------------------------------------------------------------------------------------------
# tiny HTTP/1.1 clients (standard library only)
# ---------------------------------------------------------------------------------------------

def build_request(target, host, headers=(), method="GET", body_len=None):
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: " + host]
    lines += ["%s: %s" % h for h in headers]
    if body_len is not None:
        lines.append("Content-Length: %d" % body_len)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def response_complete(buf):
    """None while incomplete, else (status, total length consumed)."""
    he = buf.find(b"\r\n\r\n")
    if he < 0:
        return None
    head = buf[:he].decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split()[1])
    except (IndexError, ValueError):
        return (-1, len(buf))
    cl, chunked = 0, False
    for h in head[1:]:
        k, _, v = h.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            cl = int(v.strip())
        elif k == "transfer-encoding" and "chunked" in v.lower():
            chunked = True
    if chunked:
        end = buf.find(b"\r\n0\r\n\r\n", he)
        return None if end < 0 else (status, end + 7)
    return (status, he + 4 + cl) if len(buf) >= he + 4 + cl else None


class Conn:
    """One keep-alive connection, one request at a time."""

    def __init__(self, port, timeout=10.0):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, raw):
        self.s.sendall(raw)
        while True:
            r = response_complete(self.buf)
            if r:
                status, n = r
                body, self.buf = self.buf[:n], self.buf[n:]
                return status, body
            chunk = self.s.recv(65536)
            if not chunk:
                raise OSError("connection closed before the response was complete")
            self.buf += chunk

    def close(self):
        self.s.close()


def one_request(port, raw, timeout=10.0):
    c = Conn(port, timeout)
    try:
        return c.request(raw)
    finally:
        c.close()


def recv_nb(s):
    """Non-blocking read: bytes, b"" when the peer closed or failed, None when nothing is there."""
    try:
        return s.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def many_connections(port, n, raw, batch, send_at_once, timeout=60.0):
    """Opens n connections. send_at_once=False: connect+request batch by batch (idle-connection
    test); True: connect all first, then send every request back to back (burst test).
    Returns (socks, statuses, seconds from the first send to the last complete response)."""
    sel = selectors.DefaultSelector()
    socks, statuses, bufs = [], [], {}
    deadline = time.monotonic() + timeout

    def connect_batch(k):
        new = []
        for _ in range(k):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            new.append(s)
        pend = set(new)
        for s in new:
            sel.register(s, selectors.EVENT_WRITE)
        while pend:
            if time.monotonic() > deadline:
                raise TimeoutError("connect timed out (%d pending)" % len(pend))
            for key, _ in sel.select(1.0):
                s = key.fileobj
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, "connect: " + os.strerror(err))
                sel.unregister(s)
                pend.discard(s)
        return new

    def read_all(group):
        pend = set(group)
        for s in group:
            bufs[s] = b""
            sel.register(s, selectors.EVENT_READ)
        while pend:
            if time.monotonic() > deadline:
                raise TimeoutError("responses timed out (%d pending)" % len(pend))
            for key, _ in sel.select(1.0):
                s = key.fileobj
                chunk = recv_nb(s)
                if chunk is None:
                    continue
                if not chunk:
                    statuses.append(-1)
                    sel.unregister(s)
                    pend.discard(s)
                    continue
                bufs[s] += chunk
                r = response_complete(bufs[s])
                if r:
                    statuses.append(r[0])
                    sel.unregister(s)
                    pend.discard(s)
        return time.monotonic()

    t0 = t1 = None
    try:
        if send_at_once:
            for i in range(0, n, batch):
                socks += connect_batch(min(batch, n - i))
            t0 = time.monotonic()
            for s in socks:
                s.send(raw)
            t1 = read_all(socks)
        else:
            t0 = time.monotonic()
            for i in range(0, n, batch):
                group = connect_batch(min(batch, n - i))
                socks += group
                for s in group:
                    s.send(raw)
                t1 = read_all(group)
    except Exception:
        for s in socks:
            s.close()
        raise
    finally:
        sel.close()
    return socks, statuses, (t1 - t0) if t0 and t1 else None


# ---------------------------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------------------------

def nginx_common(tmp, name, nofile):
    user = ""
    if os.geteuid() == 0:  # a root master would switch its workers to nobody
        import pwd
        user = "user %s;" % pwd.getpwuid(os.geteuid()).pw_name
    return """
worker_processes 1;
%(user)s
pid %(tmp)s/%(name)s.pid;
error_log %(tmp)s/%(name)s-error.log warn;
worker_rlimit_nofile %(nofile)d;
events { worker_connections %(wc)d; }
""" % {"user": user, "tmp": tmp, "name": name, "nofile": nofile, "wc": max(1024, nofile - 64)}


def nginx_temp_paths(tmp, name):
    return "\n".join("  %s_temp_path %s/%s-%s;" % (k, tmp, name, k)
                     for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def backend_conf(tmp, data, port, token, nofile):
    return nginx_common(tmp, "backend", nofile) + """
http {
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  open_file_cache max=64 inactive=3600s;
  open_file_cache_valid 3600s;
  client_max_body_size 0;
%(temps)s
  server {
    listen 127.0.0.1:%(port)d backlog=4096 default_server;
    server_name _;
    root %(data)s/www;
    # a 2xx proves the proxy attached the token
    if ($http_authorization != "Bearer %(token)s") { return 401; }
    location = /64 { }
    location = /16k { }
    location = /big { }
    location /upload/ {
      root %(data)s;
      dav_methods PUT;
      create_full_put_path on;
    }
    location / { return 404; }
  }
}
""" % {"temps": nginx_temp_paths(data, "backend"), "port": port, "data": data, "token": token}


def nginx_proxy_conf(tmp, port, bport, token, nofile):
    return nginx_common(tmp, "nginx", nofile) + """
http {
  access_log off;
  tcp_nodelay on;
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  client_max_body_size 0;
%(temps)s
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Authorization "Bearer %(token)s";
  proxy_request_buffering off;   # stream uploads, as the others do
  proxy_max_temp_file_size 0;    # never spool a download to disk
  upstream backend {
    server 127.0.0.1:%(bport)d;
    keepalive 256;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
  }
  server {  # gateway (origin-form)
    listen 127.0.0.1:%(port)d backlog=4096 default_server;
    server_name _;
    location / { proxy_pass http://backend; }
  }
  server {  # forward proxy: absolute-form GET http://bench.local/...
    listen 127.0.0.1:%(port)d;
    server_name %(fwd)s;
    location / { proxy_pass http://backend; }
  }
}
""" % {"temps": nginx_temp_paths(tmp, "nginx"), "port": port, "bport": bport, "token": token,
       "fwd": FWD_HOST}


def haproxy_conf(port, bport, token, maxconn):
    return """
global
  nbthread 1
  maxconn %(maxconn)d

defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-request 10s
  timeout http-keep-alive 300s
  http-reuse always

frontend fe
  bind 127.0.0.1:%(port)d
  acl fwd hdr(host) -i %(fwd)s
  use_backend fwd if fwd
  default_backend rev

backend rev
  http-request set-header Authorization "Bearer %(token)s"
  server b1 127.0.0.1:%(bport)d

backend fwd
  http-request set-uri %%[pathq]
  http-request set-header Authorization "Bearer %(token)s"
  server b1 127.0.0.1:%(bport)d
""" % {"port": port, "bport": bport, "token": token, "maxconn": maxconn, "fwd": FWD_HOST}


def authproxy_conf(port, admin_port, bport, token_port, slow_token_port, provisional):
    up = "http://127.0.0.1:%d" % bport
    if provisional:  # no provider: the client (wrk) sends the header, authproxy keeps it
        extra = {"client_authorization": "keep"}
    else:
        extra = {"provider": "bench"}
    routes = [dict({"host": FWD_HOST, "upstream": up, "allow_plaintext": True}, **extra),
              dict({"path_prefix": "/", "upstream": up, "allow_plaintext": True}, **extra)]
    if not provisional:
        # slowmint's route, last: after the catch-all `path_prefix: /` (which matches origin-form
        # requests only), so only absolute-form requests `GET http://slow.local/...` reach it and
        # the main table's requests match the same routes, in the same number of steps, as without
        # it.
        routes.append({"host": SLOW_HOST, "upstream": up, "allow_plaintext": True,
                       "provider": "slow"})
    conf = {
        "listen": ["127.0.0.1:%d" % port],
        "workers": 1,
        "admin_listen": "127.0.0.1:%d" % admin_port,
        "log": {"level": "warn"},
        "limits": {"drain_ms": 1000},
        "providers": {"bench": {
            "token_url": "http://127.0.0.1:%d/token" % token_port,
            "client_id": "bench",
            "client_secret": "${BENCH_SECRET}",
        }, "slow": {  # its own token endpoint; slowmint makes its mints take 2 s
            "token_url": "http://127.0.0.1:%d/token" % slow_token_port,
            "client_id": "bench-slow",
            "client_secret": "${BENCH_SECRET}",
            "expires_in_unit": "ms",  # lets slowmint hand out 1 ms tokens (see slow_mint)
        }},
        "routes": routes,
    }
    return json.dumps(conf, indent=2) + "\n"


# ---------------------------------------------------------------------------------------------
# the bench
# ---------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, a):
        self.a = a
        self.procs = {}
        self.failed = []      # human-readable problems that make the run fail
        self.notes = []
        self.token = "bench-" + secrets.token_hex(16)
        self.runs = []        # every wrk run
        self.extras = {}
        self.idle_rss = {}
        self.idle_anon = {}
        self.lib_floor = []  # [step, kB]: bench/rss_floor.c, authproxy's libraries alone

    # -- set-up ------------------------------------------------------------------------------

    def start_all(self):
        a = self.a
        base = None
        try:  # the data dir (1 GiB sparse file, uploads) on tmpfs when there is room
            st = os.statvfs("/dev/shm")
            if st.f_bavail * st.f_frsize > 3 * (1 << 30) and os.access("/dev/shm", os.W_OK):
                base = "/dev/shm"
        except OSError:
            pass
        self.tmp = tempfile.mkdtemp(prefix="authproxy-bench-")
        self.data = tempfile.mkdtemp(prefix="authproxy-bench-data-", dir=base)
        os.makedirs(os.path.join(self.data, "www"))
        os.makedirs(os.path.join(self.data, "upload"))
        with open(os.path.join(self.data, "www", "64"), "wb") as f:
            f.write(b"x" * 63 + b"\n")
        with open(os.path.join(self.data, "www", "16k"), "wb") as f:
            f.write(b"y" * 16383 + b"\n")
        with open(os.path.join(self.data, "www", "big"), "wb") as f:
            f.truncate(a.bigfile_mb << 20)  # sparse
        self.bigfile = os.path.join(self.data, "www", "big")

        if "authproxy" in self.contenders():  # a snapshot: a rebuild meanwhile cannot touch the run
            self.ap_bin = os.path.join(self.tmp, "authproxy")
            for attempt in range(20):
                try:
                    shutil.copy2(a.authproxy, self.ap_bin)
                    if subprocess.run([self.ap_bin, "--version"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, timeout=10).returncode == 0:
                        break
                except (OSError, subprocess.TimeoutExpired):
                    pass
                time.sleep(0.5)
            else:
                raise RuntimeError("cannot run a copy of %s" % a.authproxy)
            import hashlib
            with open(self.ap_bin, "rb") as f:
                self.ap_sha = hashlib.sha256(f.read()).hexdigest()[:12]
        if "floor" in self.contenders():  # snapshot too (`make clean` meanwhile is harmless)
            self.floor_bin = os.path.join(self.tmp, "floor_relay")
            build_c(a.floor)
            shutil.copy2(a.floor, self.floor_bin)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.nofile = nofile
        cc, pc = a.client_cpu, a.proxy_cpu
        tp, stp, bp, np_, hp, fp, ap, aap = pick_ports(8)
        self.ports = {"token": tp, "token-slow": stp, "backend": bp, "direct": bp, "nginx": np_,
                      "haproxy": hp, "floor": fp, "authproxy": ap, "authproxy-admin": aap}

        # mock token endpoints (outside every measured process): provider `bench`, and provider
        # `slow` (slowmint; same token, expires_in in ms)
        self.start("token", [sys.executable, os.path.join(BENCH, "token_endpoint.py"),
                             "--token", self.token, "--port", str(tp)], cpu=cc, port=tp)
        self.start("token-slow", [sys.executable, os.path.join(BENCH, "token_endpoint.py"),
                                  "--token", self.token, "--expires-in", str(SLOW_TTL_MS),
                                  "--port", str(stp)], cpu=cc, port=stp)
        # backend
        bconf = os.path.join(self.tmp, "backend.conf")
        with open(bconf, "w") as f:
            f.write(backend_conf(self.tmp, self.data, bp, self.token, nofile))
        self.start("backend", [a.nginx, "-p", self.tmp, "-e", os.path.join(self.tmp, "backend-error.log"),
                               "-c", bconf, "-g", "daemon off;"], cpu=cc, port=bp)
        for c in self.contenders():
            if c == "direct":
                continue
            if c == "nginx":
                conf = os.path.join(self.tmp, "nginx.conf")
                with open(conf, "w") as f:
                    f.write(nginx_proxy_conf(self.tmp, np_, bp, self.token, nofile))
                argv = [a.nginx, "-p", self.tmp, "-e", os.path.join(self.tmp, "nginx-error.log"),
                        "-c", conf, "-g", "daemon off;"]
            elif c == "haproxy":
                conf = os.path.join(self.tmp, "haproxy.cfg")
                with open(conf, "w") as f:
                    f.write(haproxy_conf(hp, bp, self.token, max(256, (nofile - 100) // 2)))
                argv = [a.haproxy, "-db", "-f", conf]
            elif c == "floor":
                argv = [self.floor_bin, str(fp), str(bp), "Authorization: Bearer " + self.token]
            else:
                conf = os.path.join(self.tmp, "authproxy.json")
                with open(conf, "w") as f:
                    f.write(authproxy_conf(ap, aap, bp, tp, stp, a.provisional))
                argv = [self.ap_bin, "-c", conf]
            self.start(c, argv, cpu=pc, port=self.ports[c],
                       env=dict(os.environ, BENCH_SECRET="bench-secret-" + secrets.token_hex(8)))
        time.sleep(0.3)
        for c in self.contenders():
            if c in self.procs:
                self.idle_rss[c] = mem_kb(self.procs[c].tree())[0]
                self.idle_anon[c] = anon_kb(self.procs[c].tree())
        if "authproxy" in self.contenders():
            self.lib_floor = self.measure_lib_floor()

    def measure_lib_floor(self):
        """RSS of a program linking authproxy's libraries that only initialises them."""
        path = os.path.join(self.tmp, "rss_floor")
        try:
            flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libuv", "libcjson", "libcurl",
                                    "openssl", "liburing"], capture_output=True, text=True,
                                   check=True, timeout=30).stdout.split()
            build_c(path, "rss_floor.c", flags)
            out = subprocess.run([path], capture_output=True, text=True, check=True, timeout=30).stdout
            steps = [[k, int(v)] for k, v in (l.split("\t") for l in out.splitlines())]
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            self.failed.append("RSS floor of the libraries (bench/rss_floor.c) not measured: %s" % e)
            return []
        return steps

    def start(self, name, argv, cpu, port, env=None):
        p = Proc(name, argv, os.path.join(self.tmp, name + ".log"), env=env, cpu=cpu)
        self.procs[name] = p
        if not wait_port(port, p):
            raise RuntimeError("%s did not start listening on %d:\n%s" % (name, port, p.log_tail()))
        return p

    def stop_all(self):
        for name in reversed(list(self.procs)):
            self.procs[name].stop()
        self.procs = {}

    def contenders(self):
        return self.a.contenders

    def sends_header(self, c):
        return c == "direct" or (c == "authproxy" and self.a.provisional)

    def auth_headers(self, c):
        return [("Authorization", "Bearer " + self.token)] if self.sends_header(c) else []

    def raw_get(self, c, mode, path):
        if mode == "forward":
            return build_request("http://%s%s" % (FWD_HOST, path), FWD_HOST, self.auth_headers(c))
        return build_request(path, "127.0.0.1:%d" % self.ports[c], self.auth_headers(c))

    # -- checks ------------------------------------------------------------------------------

    def preflight(self):
        """Every contender answers 2xx through its proxy in both modes; the backend refuses a
        request without the token."""
        ok = True
        st, _ = one_request(self.ports["backend"], build_request("/64", "127.0.0.1"))
        if st != 401:
            self.failed.append("backend answered %d (not 401) without the token" % st)
            ok = False
        for c in self.contenders():
            for mode, path, size in (("reverse", "/64", 64), ("reverse", "/16k", 16384),
                                     ("forward", "/64", 64)):
                try:
                    st, body = one_request(self.ports[c], self.raw_get(c, mode, path))
                except OSError as e:
                    st, body = -1, str(e).encode()
                if not 200 <= st < 300 or not body.endswith(b"\n") or len(body) < size:
                    detail = body[-300:].decode("latin-1", "replace").replace("\r\n", " | ")
                    self.failed.append("%s %s %s: status %d: %s" % (c, mode, path, st, detail))
                    ok = False
        return ok

    # -- wrk rounds --------------------------------------------------------------------------

    def background_pct(self, secs=0.5):
        everyone = [q for p in self.procs.values() for q in p.tree()] + [os.getpid()]
        m0, e0 = machine_cpu(), cpu_ticks(everyone)
        time.sleep(secs)
        m1, e1 = machine_cpu(), cpu_ticks(everyone)
        return max(0.0, 100.0 * ((m1[0] - m0[0]) - (e1 - e0)) / max(1, m1[1] - m0[1]))

    def wait_quiet(self):
        """--quiet-wait S: before a run, wait up to S seconds for the machine's background load
        (processes outside the benchmark) to drop below --quiet-pct."""
        end = time.monotonic() + self.a.quiet_wait
        while time.monotonic() < end:
            if self.background_pct() < self.a.quiet_pct:
                return

    def wrk(self, c, row, conns, dur, rnd, keep=True):
        """One wrk run; keep=False: not one of the main table's runs (not added to self.runs)."""
        mode, path, _ = ROWS[row]
        a = self.a
        if a.quiet_wait > 0:
            self.wait_quiet()
        cmd = ["timeout", "-k", "5", str(dur + 30), "taskset", "-c", str(a.client_cpu), a.wrk,
               "-t1", "-c%d" % conns, "-d%ds" % dur, "--latency", "-s",
               os.path.join(BENCH, "wrk_report.lua")]
        for k, v in self.auth_headers(c):
            cmd += ["-H", "%s: %s" % (k, v)]
        cmd.append("http://127.0.0.1:%d%s" % (self.ports[c], path))
        env = dict(os.environ, BENCH_FORWARD=FWD_HOST if mode == "forward" else "")
        proc = self.procs.get(c)
        pids = proc.tree() if proc else []
        met0 = self.ap_metrics() if c == "authproxy" else None
        everyone = [q for p in self.procs.values() for q in p.tree()] + [os.getpid()]
        reset_peak(pids)
        t0 = cpu_ticks(pids)
        m0, k0, e0 = machine_cpu(), children_ticks(), cpu_ticks(everyone)
        try:
            rc, out, _ = run_bounded(cmd, dur + 60, env=env)
        except subprocess.TimeoutExpired:
            rc, out = -1, ""
        t1 = cpu_ticks(pids)
        m1, k1, e1 = machine_cpu(), children_ticks(), cpu_ticks(everyone)
        # CPU used meanwhile by processes that are not part of the benchmark (a noisy neighbour)
        met1 = self.ap_metrics() if c == "authproxy" else None
        foreign = (m1[0] - m0[0]) - (e1 - e0) - (k1 - k0)
        bg_pct = max(0.0, 100.0 * foreign / (m1[1] - m0[1])) if m1[1] > m0[1] else 0.0
        rss, hwm = mem_kb(pids) if pids else (None, None)
        res = None
        for line in out.splitlines():
            if line.startswith("BENCH_RESULT "):
                res = json.loads(line[len("BENCH_RESULT "):])
        run = {"round": rnd, "row": row, "conns": conns, "contender": c, "rc": rc,
               "wrk_output": out, "background_cpu_pct": bg_pct,
               # the run's token is a credential like any other: never written to results
               "cmd": [x.replace(self.token, "<token>") for x in cmd]}
        if res:
            reqs = res["requests"]
            run.update(res)
            run["rps"] = reqs / (res["duration_us"] / 1e6) if res["duration_us"] else 0.0
            run["sock_errors"] = res["connect"] + res["read"] + res["write"] + res["timeout"]
            run["non2xx"] = res["status"]
            if proc:
                run["cpu_s"] = (t1 - t0) / CLK_TCK
                run["cpu_us_per_req"] = (t1 - t0) / CLK_TCK * 1e6 / reqs if reqs else None
                run["rss_kb"], run["peak_rss_kb"] = rss, hwm
        else:
            run["error"] = "wrk failed (rc %d): %s" % (rc, out.strip()[-300:])
        if met0 and met1:  # authproxy's own view: status classes, pool, retries, mints
            run["authproxy_metrics"] = {k: v - met0.get(k, 0) for k, v in met1.items()
                                        if v - met0.get(k, 0)}
        if proc and not proc.alive():
            run["error"] = "%s exited during the run:\n%s" % (c, proc.log_tail())
        if keep:
            self.runs.append(run)
        return run

    def ap_metrics(self):
        """authproxy's /metrics counters as {name{labels}: value} (empty on any failure)."""
        try:
            st, body = one_request(self.ports["authproxy-admin"],
                                   build_request("/metrics", "127.0.0.1"), timeout=2)
        except OSError:
            return {}
        out = {}
        for line in body[body.find(b"\r\n\r\n") + 4:].decode("latin-1").splitlines():
            if line and not line.startswith("#") and "_bucket" not in line:
                k, _, v = line.rpartition(" ")
                try:
                    out[k] = float(v)
                except ValueError:
                    pass
        return out

    def rounds(self):
        a = self.a
        cells = [(row, c) for row in a.rows for c in a.connections]
        total = a.rounds * len(cells) * len(self.contenders())
        i = 0
        for rnd in range(1, a.rounds + 1):
            for row, conns in cells:
                for c in self.contenders():
                    i += 1
                    if c in self.procs and not self.procs[c].alive():
                        continue
                    r = self.wrk(c, row, conns, a.duration, rnd)
                    if "error" in r:
                        warn("run %d/%d %s %s c=%d: %s" % (i, total, c, row, conns, r["error"]))
                    elif r.get("non2xx") or r.get("sock_errors"):
                        bad = {k: v for k, v in r.get("authproxy_metrics", {}).items()
                               if "requests_total" in k and "2xx" not in k}
                        if bad:
                            warn("authproxy's /metrics for that run: %s" % bad)
                    else:
                        say("  [%3d/%d] round %d %-14s c=%-4d %-10s %9.0f req/s  p99 %6.2f ms%s%s%s"
                            % (i, total, rnd, ROWS[row][2], conns, c, r["rps"], r["p99_us"] / 1000,
                               "  background CPU %.0f%%" % r["background_cpu_pct"]
                               if r["background_cpu_pct"] >= 5 else "",
                               "  cpu %.1f us/req" % r["cpu_us_per_req"]
                               if r.get("cpu_us_per_req") else "",
                               "  ERR sock=%d non2xx=%d" % (r["sock_errors"], r["non2xx"])
                               if r["sock_errors"] or r["non2xx"] else ""))

    def summarize(self):
        """One row per (row, conns, contender): medians over rounds; ratios per round, then median."""
        a = self.a
        table = []
        for row in a.rows:
            for conns in a.connections:
                by_round = {}
                for r in self.runs:
                    if r["row"] == row and r["conns"] == conns and "rps" in r:
                        by_round.setdefault(r["round"], {})[r["contender"]] = r
                for c in self.contenders():
                    mine = [rr[c] for rr in by_round.values() if c in rr]
                    if not mine:
                        table.append({"row": row, "conns": conns, "contender": c, "missing": True})
                        continue

                    def ratio(key, other, rr=None):
                        vals = []
                        for rnd in by_round.values():
                            if c in rnd and other in rnd and rnd[other].get(key) and \
                                    rnd[c].get(key) is not None:
                                vals.append(rnd[c][key] / rnd[other][key])
                        return statistics.median(vals) if vals else None

                    def best_cpu_ratio():
                        vals = []
                        for rnd in by_round.values():
                            refs = [rnd[o]["cpu_us_per_req"] for o in ("nginx", "haproxy")
                                    if o in rnd and rnd[o].get("cpu_us_per_req")]
                            if c in rnd and refs and rnd[c].get("cpu_us_per_req") is not None:
                                vals.append(rnd[c]["cpu_us_per_req"] / min(refs))
                        return statistics.median(vals) if vals else None

                    def med(key):
                        v = [m[key] for m in mine if m.get(key) is not None]
                        return statistics.median(v) if v else None

                    table.append({
                        "row": row, "conns": conns, "contender": c, "n": len(mine),
                        "rps": med("rps"), "x_direct": ratio("rps", "direct"),
                        "x_nginx": ratio("rps", "nginx"),
                        "p50_ms": med("p50_us") / 1000, "p99_ms": med("p99_us") / 1000,
                        "p99_x_nginx": ratio("p99_us", "nginx"),
                        "cpu_us": med("cpu_us_per_req"),
                        "cpu_x_floor": ratio("cpu_us_per_req", "floor"),
                        "cpu_x_best": best_cpu_ratio(),
                        "idle_rss_mb": self.idle_rss.get(c, 0) / 1024 if c in self.idle_rss else None,
                        "peak_rss_mb": max(m["peak_rss_kb"] for m in mine) / 1024
                        if mine[0].get("peak_rss_kb") is not None else None,
                        "sock_errors": sum(m["sock_errors"] for m in mine),
                        "non2xx": sum(m["non2xx"] for m in mine),
                        "bg_cpu_pct": max(m["background_cpu_pct"] for m in mine),
                        "authproxy_non2xx": {k: sum(m.get("authproxy_metrics", {}).get(k, 0)
                                                    for m in mine)
                                             for k in sorted({k for m in mine for k in
                                                              m.get("authproxy_metrics", {})})
                                             if "requests_total" in k and "2xx" not in k
                                             and "aborted" not in k},
                    })
        self.table = table
        return table

    # -- extra measurements ------------------------------------------------------------------

    def idle_connections(self):
        n = self.a.idle_conns
        need = n + 200
        if self.nofile < need * 2 + 100:
            n = max(100, (self.nofile - 300) // 2)
            self.notes.append("idle connections: RLIMIT_NOFILE %d allows only %d connections"
                              % (self.nofile, n))
        res = {}
        for c in self.contenders():
            if c == "direct" or c not in self.procs:
                continue
            proc = self.procs[c]
            time.sleep(0.3)
            before = mem_kb(proc.tree())[0]
            try:
                socks, sts, _ = many_connections(self.ports[c], n, self.raw_get(c, "reverse", "/64"),
                                                 batch=500, send_at_once=False, timeout=120)
            except (OSError, TimeoutError) as e:
                res[c] = {"error": str(e)}
                warn("idle connections %s: %s" % (c, e))
                continue
            time.sleep(1.0)
            after = mem_kb(proc.tree())[0]
            ok = sum(1 for s in sts if 200 <= s < 300)
            alive = proc.alive()
            for s in socks:
                s.close()
            res[c] = {"conns": n, "ok": ok, "rss_before_kb": before, "rss_after_kb": after,
                      "kb_per_conn": (after - before) / n, "alive": alive}
            say("  idle %-10s %d conns (%d answered 2xx): RSS %.1f -> %.1f MB, %.2f kB/conn"
                % (c, n, ok, before / 1024, after / 1024, (after - before) / n))
            time.sleep(1.0)  # let the proxies reap the closed connections
        self.extras["idle"] = res

    def curl(self, c, upload):
        a = self.a
        url = "http://127.0.0.1:%d%s" % (self.ports[c], "/upload/f" if upload else "/big")
        cmd = ["timeout", "-k", "5", str(a.transfer_timeout), "taskset", "-c", str(a.client_cpu),
               a.curl, "-sS", "-o", "/dev/null", "-H", "Expect:",
               "-w", "%{http_code} %{size_download} %{size_upload} %{time_total}"]
        for k, v in self.auth_headers(c):
            cmd += ["-H", "%s: %s" % (k, v)]
        if upload:
            cmd += ["-T", self.bigfile]
        cmd.append(url)
        proc = self.procs.get(c)
        pids = proc.tree() if proc else []
        reset_peak(pids)
        t0 = cpu_ticks(pids)
        try:
            rc, out, err = run_bounded(cmd, a.transfer_timeout + 30, merge=False)
        except subprocess.TimeoutExpired:
            rc, out, err = -1, "", "timed out"
        t1 = cpu_ticks(pids)
        out = out.split()
        res = {"rc": rc, "stderr": err.strip()[-300:]}
        if len(out) == 4:
            code, down, up, secs = int(out[0]), float(out[1]), float(out[2]), float(out[3])
            size = up if upload else down
            res.update({"status": code, "bytes": size, "seconds": secs,
                        "mb_s": size / (1 << 20) / secs if secs else 0,
                        "complete": size == a.bigfile_mb << 20 and 200 <= code < 300})
        if proc:
            res["cpu_s"] = (t1 - t0) / CLK_TCK
            res["peak_rss_kb"] = mem_kb(pids)[1]
        try:
            os.unlink(os.path.join(self.data, "upload", "f"))
        except OSError:
            pass
        return res

    def big_transfers(self):
        res = {"download": {}, "upload": {}}
        for kind in ("download", "upload"):
            for c in self.contenders():
                if c != "direct" and c not in self.procs:
                    continue
                r = self.curl(c, kind == "upload")
                res[kind][c] = r
                if r.get("status") is None:
                    warn("%s %s: curl rc %d %s" % (kind, c, r["rc"], r["stderr"]))
                    continue
                say("  %-8s %-10s %4d  %.0f MiB in %.2f s = %7.0f MiB/s%s%s"
                    % (kind, c, r["status"], r["bytes"] / (1 << 20), r["seconds"], r["mb_s"],
                       "  peak RSS %.1f MB" % (r["peak_rss_kb"] / 1024) if "peak_rss_kb" in r else "",
                       "" if r["complete"] else "  INCOMPLETE"))
        self.extras["big"] = res

    def token_ctl(self, obj, name="token"):
        st, body = one_request(self.ports[name], build_request(
            "/control", "127.0.0.1", [("Content-Type", "application/json")], "POST",
            len(json.dumps(obj))) + json.dumps(obj).encode())
        return json.loads(body[body.find(b"\r\n\r\n") + 4:])

    def token_stats(self, name="token"):
        st, body = one_request(self.ports[name], build_request("/stats", "127.0.0.1"))
        return json.loads(body[body.find(b"\r\n\r\n") + 4:])

    def mints(self, name="token"):
        return self.token_stats(name)["mints"]

    def cold_burst(self):
        """A fresh authproxy (empty cache), n connections, one request each, all sent at once."""
        a = self.a
        if "authproxy" not in self.contenders():
            return
        if a.provisional:
            self.extras["burst"] = {"skipped": "provisional mode (no provider route)"}
            return
        port, admin = pick_ports(2)
        conf = os.path.join(self.tmp, "authproxy-burst.json")
        with open(conf, "w") as f:
            f.write(authproxy_conf(port, admin, self.ports["backend"], self.ports["token"],
                                   self.ports["token-slow"], False))
        res = {"requests": a.burst, "mint_delay_ms": a.burst_mint_delay_ms}
        p = None
        try:
            p = Proc("authproxy-burst", [self.ap_bin, "-c", conf],
                     os.path.join(self.tmp, "authproxy-burst.log"), cpu=a.proxy_cpu,
                     env=dict(os.environ, BENCH_SECRET="x"))
            if not wait_port(port, p):
                raise RuntimeError("did not start:\n" + p.log_tail())
            self.token_ctl({"delay_ms": a.burst_mint_delay_ms})
            m0 = self.mints()
            socks, sts, secs = many_connections(port, a.burst, build_request("/64", "127.0.0.1"),
                                                batch=250, send_at_once=True, timeout=60)
            for s in socks:
                s.close()
            res.update({"mints": self.mints() - m0, "seconds": secs,
                        "ok": sum(1 for s in sts if 200 <= s < 300),
                        "statuses": {str(k): sts.count(k) for k in sorted(set(sts))}})
            # the same burst again, token cached: what the mint added
            time.sleep(0.5)
            socks, sts, secs = many_connections(port, a.burst, build_request("/64", "127.0.0.1"),
                                                batch=250, send_at_once=True, timeout=60)
            for s in socks:
                s.close()
            res.update({"warm_seconds": secs, "warm_ok": sum(1 for s in sts if 200 <= s < 300)})
            if "nginx" in self.procs:  # reference: the same burst through nginx
                socks, sts, secs = many_connections(
                    self.ports["nginx"], a.burst, build_request("/64", "127.0.0.1"), batch=250,
                    send_at_once=True, timeout=60)
                for s in socks:
                    s.close()
                res["nginx_seconds"] = secs
        except (OSError, RuntimeError, TimeoutError) as e:
            res["error"] = str(e)
        finally:
            try:
                self.token_ctl({"delay_ms": 0})
            except OSError:
                pass
            if p:
                p.stop()
        self.extras["burst"] = res
        if "error" in res:
            warn("cold burst: " + res["error"])
        else:
            say("  cold burst: %d requests, %d mint(s), %d answered 2xx, all answered in %.3f s "
                "(mint takes %d ms; the same burst with the token cached: %.3f s) statuses %s"
                % (a.burst, res["mints"], res["ok"], res["seconds"], a.burst_mint_delay_ms,
                   res["warm_seconds"], res["statuses"]))

    def replay_cost(self):
        """401 replay: the cached token is made stale (forced mint of a token the backend refuses);
        the next request gets 401 upstream, authproxy mints again and replays. Cost = median
        latency of such a request minus that of a warm one."""
        a = self.a
        if "authproxy" not in self.procs:
            return
        if a.provisional:
            self.extras["replay"] = {"skipped": "provisional mode (no provider route)"}
            return
        port, admin = self.ports["authproxy"], self.ports["authproxy-admin"]
        req = build_request("/64", "127.0.0.1")
        res = {}
        conn = None
        try:
            conn = Conn(port)
            warm, replay, bad = [], [], []
            for _ in range(a.replay_iters):
                t = time.perf_counter()
                st, _ = conn.request(req)
                warm.append(time.perf_counter() - t)
                if st != 200:
                    bad.append("warm %d" % st)
            for i in range(a.replay_iters):
                self.token_ctl({"stale_next": 1})
                m0 = self.mints()
                st, body = one_request(admin, build_request("/tokens/bench/refresh", "127.0.0.1",
                                                            method="POST", body_len=0))
                if not 200 <= st < 300:
                    raise RuntimeError("POST /tokens/bench/refresh answered %d: %s"
                                       % (st, body[-200:].decode("latin-1")))
                end = time.monotonic() + 5
                while self.mints() == m0 and time.monotonic() < end:
                    time.sleep(0.005)
                time.sleep(0.05)  # let the forced mint land in the cache
                m1 = self.mints()
                t = time.perf_counter()
                st, _ = conn.request(req)
                replay.append(time.perf_counter() - t)
                m2 = self.mints()
                if st != 200 or m2 - m1 != 1:
                    bad.append("replay %d status %d, %d mint(s)" % (i, st, m2 - m1))
            mint = []
            for _ in range(a.replay_iters):  # what one mint costs seen from a client
                t = time.perf_counter()
                one_request(self.ports["token"], build_request(
                    "/token", "127.0.0.1", [("Content-Type", "application/x-www-form-urlencoded")],
                    "POST", 29) + b"grant_type=client_credentials")
                mint.append(time.perf_counter() - t)
            w, r, m = statistics.median(warm), statistics.median(replay), statistics.median(mint)
            res = {"iters": a.replay_iters, "warm_ms": w * 1000, "replay_ms": r * 1000,
                   "cost_ms": (r - w) * 1000, "mint_ms": m * 1000, "problems": bad[:10],
                   "n_problems": len(bad)}
            say("  401 replay: warm request %.3f ms, request replayed after a 401 %.3f ms "
                "(cost %.3f ms incl. one mint; a mint alone, new connection: %.3f ms)%s"
                % (w * 1000, r * 1000, (r - w) * 1000, m * 1000,
                   "; problems: %s" % bad[:3] if bad else ""))
        except (OSError, RuntimeError, ValueError) as e:
            res = {"error": str(e)}
            warn("401 replay: %s" % e)
        finally:
            if conn:
                conn.close()
            try:
                self.token_ctl({"stale_next": 0})
            except OSError:
                pass
        self.extras["replay"] = res

    # -- slow mint on another provider --------------------------------------------------------

    def slow_load(self, req, stop, st, deadline):
        """slowmint's background load (its own thread, pinned to the client CPU): --slowmint-clients
        keep-alive connections on the slow route, each with one request outstanding at a time
        (answered when the next mint lands: the tokens then live 1 ms), and forced mints
        (POST /tokens/slow/refresh, from a second thread since it answers when the mint has
        ended) started every 0.2 s or as soon as the previous one answers. Once `stop` is set:
        no new request, no refresh; returns when the outstanding requests are answered, or at
        `deadline`."""
        a = self.a
        try:
            os.sched_setaffinity(0, {a.client_cpu})  # pid 0: this thread only
        except (OSError, AttributeError):
            pass
        refresh = build_request("/tokens/slow/refresh", "127.0.0.1", method="POST", body_len=0)
        # at most about one request per client and mint, with room: a cached token that still
        # lived would otherwise turn the clients into a load generator
        per_client = int((a.duration + 10) * 1000 / max(a.slowmint_delay_ms, 100)) + 5
        cap = a.slowmint_clients * per_client
        sel = selectors.DefaultSelector()
        socks = {}  # socket -> [received bytes, send time]

        def refresher():
            next_refresh = 0.0
            for _ in range(1000000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                time.sleep(max(0.0, next_refresh - time.monotonic()))
                next_refresh = time.monotonic() + 0.2
                try:
                    code = one_request(self.ports["authproxy-admin"], refresh,
                                       timeout=a.slowmint_delay_ms / 1000.0 + 5)[0]
                except OSError:
                    code = -1
                st["refresh"][str(code)] = st["refresh"].get(str(code), 0) + 1  # its only writer

        ref = threading.Thread(target=refresher, daemon=True)

        def send(s):
            s.sendall(req)  # a few dozen bytes: never blocks on an empty socket buffer
            socks[s][1] = time.monotonic()
            st["sent"] += 1

        def drop(s):
            sel.unregister(s)
            del socks[s]
            s.close()

        try:
            for _ in range(a.slowmint_clients):
                s = socket.create_connection(("127.0.0.1", self.ports["authproxy"]), timeout=5)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setblocking(False)
                socks[s] = [b"", 0.0]
                sel.register(s, selectors.EVENT_READ)
                send(s)
            ref.start()
            for _ in range(1000000):
                now = time.monotonic()
                if not socks or now > deadline:
                    break
                for key, _ in sel.select(0.05):
                    s = key.fileobj
                    chunk = recv_nb(s)
                    if chunk is None:
                        continue
                    if not chunk:  # closed without (a complete) answer
                        st["statuses"]["-1"] = st["statuses"].get("-1", 0) + 1
                        drop(s)
                        continue
                    socks[s][0] += chunk
                    r = response_complete(socks[s][0])
                    if not r:
                        continue
                    status, n = r
                    socks[s][0] = socks[s][0][n:]
                    st["statuses"][str(status)] = st["statuses"].get(str(status), 0) + 1
                    st["latency_s"].append(time.monotonic() - socks[s][1])
                    if stop.is_set():
                        drop(s)
                    elif st["sent"] >= cap:
                        st["capped"] = True
                        drop(s)
                    else:
                        send(s)
        except Exception as e:  # reported by slow_mint
            st["error"] = "%s: %s" % (type(e).__name__, e)
        finally:
            if ref.is_alive():
                ref.join(max(0.0, deadline - time.monotonic()) + a.slowmint_delay_ms / 1000.0 + 6)
            st["unanswered"] = len(socks)
            for s in list(socks):
                drop(s)
            sel.close()

    def wait_slow_idle(self, secs):
        """Until the slow token endpoint has no mint in flight (at most secs). True if idle."""
        end = time.monotonic() + secs
        for _ in range(int(secs / 0.02) + 1):
            if self.token_stats("token-slow")["in_flight"] == 0:
                return True
            if time.monotonic() > end:
                break
            time.sleep(0.02)
        return False

    def wrk_during_slow_mint(self, conns, rnd, req):
        """wrk on the reverse 64 B route while provider `slow` has a mint in flight for the whole
        run. Returns (wrk run, what the slow route saw)."""
        a = self.a
        delay_s = a.slowmint_delay_ms / 1000.0
        # first replace the cached slow token by a 1 ms one (mint without delay), so that every
        # request on the slow route from now on waits for a mint (a forced refresh alone keeps
        # serving the cached token: nobody would wait)
        self.token_ctl({"delay_ms": 0, "expires_in": 1}, "token-slow")
        m = self.mints("token-slow")
        st, body = one_request(self.ports["authproxy-admin"], build_request(
            "/tokens/slow/refresh", "127.0.0.1", method="POST", body_len=0))
        if not 200 <= st < 300:
            raise RuntimeError("POST /tokens/slow/refresh answered %d: %s"
                               % (st, body[-200:].decode("latin-1", "replace")))
        end = time.monotonic() + 5
        for _ in range(500):
            if self.mints("token-slow") > m or time.monotonic() > end:
                break
            time.sleep(0.01)
        self.wait_slow_idle(5)
        time.sleep(0.05)  # let the short-lived token land in the cache
        self.token_ctl({"delay_ms": a.slowmint_delay_ms}, "token-slow")

        load = {"sent": 0, "statuses": {}, "latency_s": [], "refresh": {}}
        stop = threading.Event()
        th = threading.Thread(target=self.slow_load, daemon=True,
                              args=(req, stop, load, time.monotonic() + a.duration + 60 + delay_s))
        s0 = self.token_stats("token-slow")
        th.start()
        try:
            end = time.monotonic() + 5  # wrk starts once a slow mint is in flight
            for _ in range(500):
                if self.token_stats("token-slow")["in_flight"] or time.monotonic() > end:
                    break
                time.sleep(0.01)
            s1, t1 = self.token_stats("token-slow"), time.monotonic()
            run = self.wrk("authproxy", "rev64", conns, a.duration, rnd, keep=False)
            s2, t2 = self.token_stats("token-slow"), time.monotonic()
        finally:
            stop.set()
            th.join(delay_s + 15)
            # no slow mint left in flight for the next baseline run
            idle = self.wait_slow_idle(delay_s + 10)
            self.token_ctl({"delay_ms": 0, "expires_in": SLOW_TTL_MS}, "token-slow")
        lat = sorted(load.pop("latency_s"))
        sts = load["statuses"]
        load.update({
            "mints": s2["mints"] - s0["mints"],
            "in_flight_at_start": s1["in_flight"],
            "mint_coverage": (s2["busy_s"] - s1["busy_s"]) / (t2 - t1) if t2 > t1 else None,
            "answered": sum(sts.values()),
            "ok": sum(v for k, v in sts.items() if 200 <= int(k) < 300),
            "wait_ms_median": statistics.median(lat) * 1000 if lat else None,
            "wait_ms_max": lat[-1] * 1000 if lat else None,
            "thread_stopped": not th.is_alive(), "idle_after": idle})
        return run, load

    def slow_mint(self):
        """Target: "a token mint taking 2 s on one provider: p99 of other routes unchanged (within
        10 %)". wrk -c50 on the reverse 64 B route (provider `bench`, token cached), run twice per
        round: (a) nothing else happening, (b) while provider `slow` has a mint in flight
        (--slowmint-delay-ms) for the whole run and --slowmint-clients requests on its route wait
        for it. Ratio = p99 (b) / p99 (a) per round, then the median."""
        a = self.a
        if "authproxy" not in self.procs:
            return
        if a.provisional:
            self.extras["slowmint"] = {"skipped": "provisional mode (no provider route)"}
            return
        conns = 50
        res = {"delay_ms": a.slowmint_delay_ms, "clients": a.slowmint_clients, "conns": conns,
               "duration": a.duration, "row": "rev64", "target": SLOWMINT_TARGET, "rounds": []}
        req = build_request("http://%s/64" % SLOW_HOST, SLOW_HOST)
        problems = []
        try:
            st, body = one_request(self.ports["authproxy"], req)
            if not 200 <= st < 300:
                raise RuntimeError("the slow route answered %d: %s"
                                   % (st, body[-200:].decode("latin-1", "replace")))
            for rnd in range(1, a.rounds + 1):
                base = self.wrk("authproxy", "rev64", conns, a.duration, rnd, keep=False)
                during, load = self.wrk_during_slow_mint(conns, rnd, req)
                rec = {"round": rnd, "base": wrk_brief(base), "slow": wrk_brief(during),
                       "load": load, "ratio": None}
                if base.get("p99_us") and during.get("p99_us"):
                    rec["ratio"] = during["p99_us"] / base["p99_us"]
                res["rounds"].append(rec)
                for what, r in (("baseline", base), ("during the slow mint", during)):
                    if "error" in r:
                        problems.append("round %d, %s: %s" % (rnd, what, r["error"]))
                    elif r.get("non2xx") or r.get("sock_errors"):
                        problems.append("round %d, %s: %d non-2xx, %d socket errors on route bench"
                                        % (rnd, what, r["non2xx"], r["sock_errors"]))
                if load["ok"] != load["answered"] or load["unanswered"] or not load["ok"]:
                    problems.append("round %d: slow route: %d of %d requests answered 2xx "
                                    "(statuses %s, %d unanswered)"
                                    % (rnd, load["ok"], load["sent"], load["statuses"],
                                       load["unanswered"]))
                if not load["mints"]:
                    problems.append("round %d: no slow mint during the run" % rnd)
                for k, msg in (("error", "load thread: %s" % load.get("error")),
                               ("capped", "slow clients hit their request cap (token cached?)")):
                    if load.get(k):
                        problems.append("round %d: %s" % (rnd, msg))
                if not load["thread_stopped"] or not load["idle_after"]:
                    problems.append("round %d: the load thread or a slow mint outlived the run"
                                    % rnd)
                say("  slowmint round %d: p99 %s ms baseline, %s ms during a %d ms mint (x%s), "
                    "req/s %s / %s; slow route %d/%d 2xx, %d mint(s), a mint in flight %s of "
                    "the run%s" % (rnd, fmt(ms(base.get("p99_us")), ".3f"),
                                   fmt(ms(during.get("p99_us")), ".3f"), a.slowmint_delay_ms,
                                   fmt(rec["ratio"], ".2f"), fmt(base.get("rps"), ".0f"),
                                   fmt(during.get("rps"), ".0f"), load["ok"], load["sent"],
                                   load["mints"], fmt_pct(load["mint_coverage"]), bg_note(rec)))
            res.update(slowmint_medians(res["rounds"]))
            res["problems"] = problems
            say("  slowmint: median p99 %s ms -> %s ms: ratio %s (target <= %.2f: %s)"
                % (fmt(res["p99_base_ms"], ".3f"), fmt(res["p99_slow_ms"], ".3f"),
                   fmt(res["ratio"], ".2f"), SLOWMINT_TARGET, met_word(res["met"])))
        except (OSError, RuntimeError, ValueError) as e:
            res["error"] = str(e)
            warn("slow mint: %s" % e)
        finally:
            try:
                self.token_ctl({"delay_ms": 0, "expires_in": SLOW_TTL_MS}, "token-slow")
            except (OSError, ValueError):
                pass
        if "error" in res:
            problems.append(res["error"])
        self.failed += ["slowmint: " + p for p in problems]
        self.extras["slowmint"] = res


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------

def fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def ms(us):
    return None if us is None else us / 1000.0


def fmt_pct(v):
    return fmt(None if v is None else 100.0 * v, ".0f") + " %"


def met_word(met):
    return "-" if met is None else ("met" if met else "NOT met")


def wrk_brief(r):
    """The figures of a wrk run that an extra measurement keeps."""
    keys = ("rc", "requests", "rps", "p50_us", "p99_us", "p999_us", "max_us", "non2xx",
            "sock_errors", "background_cpu_pct", "cpu_us_per_req", "error", "authproxy_metrics")
    return {k: r[k] for k in keys if k in r}


def bg_note(rec):
    """A slowmint round disturbed by processes outside the benchmark (as the table's bg CPU %)."""
    bg = max(rec[k].get("background_cpu_pct") or 0.0 for k in ("base", "slow"))
    return ", background CPU %.0f %% (disturbed: rerun)" % bg if bg >= 5 else ""


def slowmint_medians(rounds):
    def med(vals):
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None
    ratio = med(r["ratio"] for r in rounds)
    return {"p99_base_ms": ms(med(r["base"].get("p99_us") for r in rounds)),
            "p99_slow_ms": ms(med(r["slow"].get("p99_us") for r in rounds)),
            "rps_base": med(r["base"].get("rps") for r in rounds),
            "rps_slow": med(r["slow"].get("rps") for r in rounds),
            "ratio": ratio, "met": None if ratio is None else ratio <= SLOWMINT_TARGET}


def table_lines(b):
    hdr = ["mode / size", "conns", "contender", "req/s", "x direct", "x nginx", "p50 ms", "p99 ms",
           "p99 x nginx", "CPU us/req", "CPU x floor", "CPU x best(ngx,hap)", "idle RSS MB",
           "peak RSS MB", "sock err", "non-2xx", "bg CPU %"]
    rows = []
    for t in b.table:
        label = ROWS[t["row"]][2]
        name = t["contender"] + ("*" if t["contender"] == "authproxy" and b.a.provisional else "")
        if t.get("missing"):
            rows.append([label, str(t["conns"]), name] + ["n/a"] * (len(hdr) - 3))
            continue
        rows.append([label, str(t["conns"]), name, fmt(t["rps"], ".0f"), fmt(t["x_direct"], ".2f"),
                     fmt(t["x_nginx"], ".2f"), fmt(t["p50_ms"], ".3f"), fmt(t["p99_ms"], ".3f"),
                     fmt(t["p99_x_nginx"], ".2f"), fmt(t["cpu_us"], ".2f"),
                     fmt(t["cpu_x_floor"], ".2f"), fmt(t["cpu_x_best"], ".2f"),
                     fmt(t["idle_rss_mb"], ".1f"), fmt(t["peak_rss_mb"], ".1f"),
                     str(t["sock_errors"]), str(t["non2xx"]), fmt(t["bg_cpu_pct"], ".0f")])
    return hdr, rows


def render_text(hdr, rows):
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(hdr)]
    out = ["  ".join(h.rjust(w[i]) if i >= 3 else h.ljust(w[i]) for i, h in enumerate(hdr))]
    prev = None
    for r in rows:
        if prev is not None and (r[0], r[1]) != prev:
            out.append("")
        prev = (r[0], r[1])
        out.append("  ".join(c.rjust(w[i]) if i >= 3 else c.ljust(w[i]) for i, c in enumerate(r)))
    return "\n".join(out)


def render_md(hdr, rows):
    out = ["| " + " | ".join(hdr) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(hdr) - 3)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def extras_lines(b):
    out = []
    e = b.extras
    if b.idle_anon:
        out.append("- RSS after start (private = RssAnon; the rest is shared libraries' file pages): "
                   + ", ".join("%s %.1f MB (%.1f MB private)" % (c, b.idle_rss[c] / 1024, b.idle_anon[c] / 1024)
                               for c in b.idle_anon if c in b.idle_rss))
    if b.lib_floor:
        out.append("- RSS of a program that links authproxy's libraries and only initialises them "
                   "(bench/rss_floor.c, cumulative): "
                   + ", ".join("%s %.1f MB" % (k, v / 1024) for k, v in b.lib_floor))
    if "idle" in e:
        for c, r in e["idle"].items():
            if "error" in r:
                out.append("- idle keep-alive connections, %s: failed: %s" % (c, r["error"]))
            else:
                out.append("- idle keep-alive connections, %s: %d held (%d answered 2xx), RSS %.1f -> "
                           "%.1f MB: **%.2f kB per connection**%s"
                           % (c, r["conns"], r["ok"], r["rss_before_kb"] / 1024,
                              r["rss_after_kb"] / 1024, r["kb_per_conn"],
                              "" if r["alive"] else " (PROCESS DIED)"))
    if "big" in e:
        for kind, per in e["big"].items():
            d = per.get("direct", {}).get("mb_s")
            n = per.get("nginx", {}).get("mb_s")
            for c, r in per.items():
                if r.get("status") is None:
                    out.append("- %d MiB %s, %s: failed (curl rc %d) %s"
                               % (b.a.bigfile_mb, kind, c, r["rc"], r["stderr"]))
                    continue
                out.append("- %d MiB %s, %s: status %d, %.0f MiB/s%s%s%s%s%s"
                           % (b.a.bigfile_mb, kind, c, r["status"], r["mb_s"],
                              " (x direct %.2f" % (r["mb_s"] / d) if d else " (",
                              ", x nginx %.2f)" % (r["mb_s"] / n) if n else ")",
                              ", peak RSS %.1f MB" % (r["peak_rss_kb"] / 1024) if "peak_rss_kb" in r else "",
                              ", proxy CPU %.2f s" % r["cpu_s"] if "cpu_s" in r else "",
                              "" if r["complete"] else ", INCOMPLETE"))
    if "burst" in e:
        r = e["burst"]
        if "skipped" in r:
            out.append("- cold-cache burst: skipped (%s)" % r["skipped"])
        elif "error" in r:
            out.append("- cold-cache burst: failed: %s" % r["error"])
        else:
            out.append("- cold-cache burst (fresh authproxy, %d concurrent requests, token endpoint "
                       "answering after %d ms): **%d mint(s)**, %d answered 2xx, all answered in "
                       "%.3f s (the same burst again with the token cached: %.3f s, %d 2xx%s); "
                       "statuses %s" % (r["requests"], r["mint_delay_ms"], r["mints"], r["ok"],
                                        r["seconds"], r["warm_seconds"], r["warm_ok"],
                                        "; through nginx: %.3f s" % r["nginx_seconds"]
                                        if "nginx_seconds" in r else "", r["statuses"]))
    if "replay" in e:
        r = e["replay"]
        if "skipped" in r:
            out.append("- 401 replay: skipped (%s)" % r["skipped"])
        elif "error" in r:
            out.append("- 401 replay: failed: %s" % r["error"])
        else:
            out.append("- 401 replay (%d iterations, one keep-alive connection): warm request %.3f ms, "
                       "request answered 401 upstream then re-minted and replayed %.3f ms: **cost "
                       "%.3f ms** (includes one mint; a mint alone from a client on a new "
                       "connection: %.3f ms)%s"
                       % (r["iters"], r["warm_ms"], r["replay_ms"], r["cost_ms"], r["mint_ms"],
                          "; %d problem(s): %s" % (r["n_problems"], r["problems"])
                          if r["n_problems"] else ""))
    if "slowmint" in e:
        r = e["slowmint"]
        if "skipped" in r:
            out.append("- slow mint on another provider: skipped (%s)" % r["skipped"])
        elif "error" in r:
            out.append("- slow mint on another provider: failed: %s" % r["error"])
        else:
            rounds = "; ".join(
                "round %d: %s -> %s ms (x%s), %s -> %s req/s, slow route %d/%d 2xx (waited "
                "median %s ms), %d mint(s), a mint in flight %s of the run%s"
                % (x["round"], fmt(ms(x["base"].get("p99_us")), ".3f"),
                   fmt(ms(x["slow"].get("p99_us")), ".3f"), fmt(x["ratio"], ".2f"),
                   fmt(x["base"].get("rps"), ".0f"), fmt(x["slow"].get("rps"), ".0f"),
                   x["load"]["ok"], x["load"]["sent"], fmt(x["load"]["wait_ms_median"], ".0f"),
                   x["load"]["mints"], fmt_pct(x["load"]["mint_coverage"]), bg_note(x))
                for x in r["rounds"])
            out.append("- slow mint on another provider (wrk -c%d reverse 64 B on route `bench`, "
                       "%d round(s), each a run without and a run while provider `slow`'s token "
                       "endpoint takes %d ms per mint, a mint in flight throughout, and %d "
                       "requests on its route wait for it): p99 %s ms without, %s ms during the "
                       "slow mint (medians): **ratio %s** (median of the rounds' ratios; target "
                       "<= %.2f: %s); req/s %s without, %s during. Per round: %s%s"
                       % (r["conns"], len(r["rounds"]), r["delay_ms"], r["clients"],
                          fmt(r["p99_base_ms"], ".3f"), fmt(r["p99_slow_ms"], ".3f"),
                          fmt(r["ratio"], ".2f"), r["target"], met_word(r["met"]),
                          fmt(r["rps_base"], ".0f"), fmt(r["rps_slow"], ".0f"), rounds,
                          "; %d problem(s): %s" % (len(r["problems"]), r["problems"][:3])
                          if r.get("problems") else ""))
    return out


def chart(b, outdir):
    """PNG: req/s and CPU us/req per contender, one cluster per (row, conns)."""
    cs = b.contenders()
    dat = os.path.join(outdir, "chart.dat")
    with open(dat, "w") as f:
        f.write("# label " + " ".join("rps_" + c for c in cs) + " " + " ".join("cpu_" + c for c in cs) + "\n")
        for row in b.a.rows:
            for conns in b.a.connections:
                rec = {t["contender"]: t for t in b.table if t["row"] == row and t["conns"] == conns}
                label = '"%s c%d"' % (ROWS[row][2], conns)
                vals = [fmt(rec.get(c, {}).get("rps"), ".1f", "0") for c in cs]
                vals += [fmt(rec.get(c, {}).get("cpu_us"), ".3f", "0") for c in cs]
                f.write(label + " " + " ".join(vals) + "\n")
    gp = os.path.join(outdir, "chart.gp")
    n = len(cs)
    names = [c + ("*" if c == "authproxy" and b.a.provisional else "") for c in cs]
    colors = {"direct": "#999999", "nginx": "#2ca02c", "haproxy": "#1f77b4", "floor": "#ff7f0e",
              "authproxy": "#d62728"}
    rps_plot = ", ".join("'%s' using %d:xtic(1) title '%s' lc rgb '%s'"
                         % (dat, 2 + i, names[i], colors[cs[i]]) for i in range(n))
    cpu_plot = ", ".join("'%s' using %d:xtic(1) title '%s' lc rgb '%s'"
                         % (dat, 2 + n + i, names[i], colors[cs[i]])
                         for i in range(n) if cs[i] != "direct")
    with open(gp, "w") as f:
        f.write("""set terminal pngcairo size 1400,900 font ',10'
set output '%(png)s'
set multiplot layout 2,1 title '%(title)s'
set style data histograms
set style histogram cluster gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key outside right top
set yrange [0:*]
set offsets 0, 0, graph 0.08, 0
set ylabel 'requests/s (median)'
plot %(rps)s
set ylabel 'proxy CPU us per request (median)'
plot %(cpu)s
unset multiplot
""" % {"png": os.path.join(outdir, "chart.png"), "title": "authproxy benchmark %s" % b.stamp,
           "rps": rps_plot, "cpu": cpu_plot})
    r = subprocess.run([b.a.gnuplot, gp], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    if r.returncode != 0:
        warn("gnuplot failed: " + r.stdout.decode("utf-8", "replace")[-500:])
        return None
    return os.path.join(outdir, "chart.png")


def environment(a):
    def ver(cmd):
        try:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
            return r.stdout.decode("utf-8", "replace").strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    rev = ver(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    return {"kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(),
            "nginx": ver([a.nginx, "-v"]), "haproxy": ver([a.haproxy, "-v"]),
            "wrk": ver([a.wrk, "-v"]), "authproxy": ver([a.authproxy, "--version"]),
            "git": rev if "fatal" not in rev else "no commit"}


def write_results(b, outdir, hdr, rows, cmdline, png, env=None):
    os.makedirs(outdir, exist_ok=True)
    if env is None:
        env = environment(b.a)
        if getattr(b, "ap_sha", None):
            env["authproxy"] += " sha256:" + b.ap_sha
    with open(os.path.join(outdir, "raw.json"), "w") as f:
        json.dump({"command": cmdline, "stamp": b.stamp, "args": vars(b.a), "environment": env, "table": b.table,
                   "runs": b.runs, "extras": b.extras, "idle_rss_kb": b.idle_rss,
                   "idle_anon_kb": b.idle_anon, "lib_floor_kb": b.lib_floor,
                   "failed": b.failed, "notes": b.notes}, f, indent=1, default=str)
    a = b.a
    md = ["# authproxy benchmark, %s" % b.stamp, "",
          "Command: `%s`" % cmdline, "",
          "Machine: %s, %s CPUs, Linux %s; %s; %s; %s; %s (%s)."
          % (env["cpu"], env["cpus"], env["kernel"], env["nginx"], env["haproxy"], env["wrk"],
             env["authproxy"], env["git"]), "",
          "wrk `-t1 -c{%s} -d%ds --latency`, %d round(s) interleaved (%s), medians; wrk and the nginx "
          "backend on CPU %d, the proxy under test alone on CPU %d. CPU us/req = utime+stime of the "
          "proxy's processes during the run / requests. Ratios are taken per round, then the median. "
          "bg CPU %% = share of the machine's CPU used during the run by processes outside the "
          "benchmark (max over rounds): above a few %% the row is disturbed."
          % (",".join(map(str, a.connections)), a.duration, a.rounds, ", ".join(b.contenders()),
             a.client_cpu, a.proxy_cpu), ""]
    if a.provisional:
        md += ["**authproxy\\* rows are provisional**: the route has no provider; wrk sends the "
               "Authorization header and authproxy keeps it (`client_authorization: keep`). They do "
               "not measure token injection.", ""]
    md += [render_md(hdr, rows), ""]
    if png:
        md += ["![chart](chart.png)", ""]
    ex = extras_lines(b)
    if ex:
        md += ["## Other measurements", ""] + ex + [""]
    if b.failed or b.notes:
        md += ["## Problems and notes", ""] + ["- " + x.replace("\n", " ") for x in b.failed + b.notes] + [""]
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write("\n".join(md))


# ---------------------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="bench/run.sh",
        description="Side-by-side benchmark: direct, nginx, HAProxy, floor relay, authproxy.")
    ap.add_argument("--smoke", action="store_true",
                    help="≈2 s per contender: 1 round, reverse 64 B, c=50, -d1s, no extra "
                         "measurements, results not written under bench/results; exit 0 only if "
                         "every contender starts and answers 2xx (no socket errors, no non-2xx)")
    ap.add_argument("-d", "--duration", type=int, default=5, help="seconds per wrk run (5)")
    ap.add_argument("-r", "--rounds", type=int, default=3, help="interleaved rounds (3)")
    ap.add_argument("-c", "--connections", default="50,200", help="wrk connection counts (50,200)")
    ap.add_argument("--rows", default="rev64,rev16k,fwd64",
                    help="rows among %s (rev64,rev16k,fwd64)" % ",".join(ROWS))
    ap.add_argument("--contenders", default=",".join(ALL_CONTENDERS),
                    help="subset/order of %s" % ",".join(ALL_CONTENDERS))
    ap.add_argument("--no-extras", action="store_true",
                    help="skip idle connections, 1 GiB transfers, cold burst, 401 replay and "
                         "slow mint")
    ap.add_argument("--extras", default=",".join(ALL_EXTRAS),
                    help="which extra measurements (%s)" % ",".join(ALL_EXTRAS))
    ap.add_argument("--idle-conns", type=int, default=7000)
    ap.add_argument("--bigfile-mb", type=int, default=1024)
    ap.add_argument("--transfer-timeout", type=int, default=120)
    ap.add_argument("--burst", type=int, default=1000, help="cold-cache burst size (1000)")
    ap.add_argument("--burst-mint-delay-ms", type=int, default=200,
                    help="the mock token endpoint's answer delay during the burst (200)")
    ap.add_argument("--replay-iters", type=int, default=30)
    ap.add_argument("--slowmint-delay-ms", type=int, default=2000,
                    help="slowmint: how long provider `slow`'s mints take (2000)")
    ap.add_argument("--slowmint-clients", type=int, default=20,
                    help="slowmint: requests on the slow route waiting for its mint (20)")
    ap.add_argument("--provisional", action="store_true",
                    help="authproxy route WITHOUT provider, wrk sends the header "
                         "(rows marked authproxy*; only until the token engine lands)")
    ap.add_argument("--quiet-wait", type=float, default=0,
                    help="before each wrk run wait up to this many seconds for the background "
                         "load (CPU used by processes outside the benchmark) to fall below "
                         "--quiet-pct (0: don't wait)")
    ap.add_argument("--quiet-pct", type=float, default=5.0)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--proxy-cpu", type=int, default=1)
    ap.add_argument("--out", help="results directory (default bench/results/<date-time>; "
                                  "smoke: none unless given)")
    ap.add_argument("--authproxy", default=os.path.join(ROOT, "build", "authproxy"))
    ap.add_argument("--floor", default=os.path.join(ROOT, "build", "bench", "floor_relay"))
    a = ap.parse_args(argv)
    a.cmdline_args = argv
    if a.smoke:
        a.duration, a.rounds, a.connections, a.rows = 1, 1, "50", "rev64"
        a.no_extras = True
    a.connections = [int(x) for x in str(a.connections).split(",") if x]
    a.rows = [x for x in a.rows.split(",") if x]
    a.contenders = [x for x in a.contenders.split(",") if x]
    a.extras = [] if a.no_extras else [x for x in a.extras.split(",") if x]
    bad = [r for r in a.rows if r not in ROWS] + [c for c in a.contenders if c not in ALL_CONTENDERS]
    bad += [x for x in a.extras if x not in ALL_EXTRAS]
    if bad:
        ap.error("unknown row/contender/extra: %s" % ", ".join(bad))
    for tool in ("nginx", "haproxy", "wrk", "gnuplot", "curl", "taskset", "timeout"):
        setattr(a, tool, which(tool))
    return a


def render(outdir):
    """Rewrites results.md and chart.png of a results directory from its raw.json."""
    with open(os.path.join(outdir, "raw.json")) as f:
        d = json.load(f)
    b = Bench.__new__(Bench)
    b.a = argparse.Namespace(**d["args"])
    b.table, b.runs, b.extras = d["table"], d["runs"], d["extras"]
    b.idle_rss, b.failed, b.notes = d["idle_rss_kb"], d["failed"], d["notes"]
    b.idle_anon = d.get("idle_anon_kb", {})
    b.lib_floor = d.get("lib_floor_kb", [])
    b.stamp = d.get("stamp") or os.path.basename(os.path.normpath(outdir))
    hdr, rows = table_lines(b)
    png = chart(b, outdir) if b.a.gnuplot else None
    write_results(b, outdir, hdr, rows, d["command"], png, env=d["environment"])
    say(render_text(hdr, rows))
    say("\n".join(extras_lines(b)))
    return 0


def build_c(path, name="floor_relay.c", flags=()):
    """gcc -O2 bench/<name> [flags] -> path, when missing or older than the source."""
    src = os.path.join(BENCH, name)
    if os.path.exists(path) and os.path.getmtime(path) >= os.path.getmtime(src):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    subprocess.run([os.environ.get("CC", "gcc"), "-O2", "-Wall", "-Wextra", "-o", path, src]
                   + list(flags), check=True, timeout=120)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
            return
        except (ValueError, OSError):
            continue


def main(argv):
    if len(argv) == 2 and argv[0] == "--render":
        return render(argv[1])
    a = parse_args(argv)
    try:
        return run(a)
    finally:
        for d in (getattr(RUNNING, "tmp", None), getattr(RUNNING, "data", None)):
            if d:
                shutil.rmtree(d, ignore_errors=True)


class _Running:
    pass


RUNNING = _Running()


def run(a):
    missing = [t for t in ("nginx", "wrk", "curl", "taskset", "timeout") if not getattr(a, t)]
    if "haproxy" in a.contenders and not a.haproxy:
        missing.append("haproxy")
    if not a.smoke and not a.gnuplot:
        missing.append("gnuplot")
    if missing:
        warn("missing tools: %s (make deps-bench installs them)" % ", ".join(missing))
        return 2
    if "authproxy" in a.contenders and not os.access(a.authproxy, os.X_OK):
        warn("authproxy not found at %s (make build/authproxy)" % a.authproxy)
        return 2
    if "floor" in a.contenders:
        try:
            build_c(a.floor)
        except (OSError, subprocess.CalledProcessError) as e:
            warn("cannot build the floor relay: %s" % e)
            return 2
    ncpu = os.cpu_count() or 1
    if max(a.client_cpu, a.proxy_cpu) >= ncpu:
        warn("only %d CPU(s): running everything on CPU 0 (the proxy is no longer isolated)" % ncpu)
        a.client_cpu = a.proxy_cpu = 0
    raise_nofile()

    cmdline = " ".join(["bench/run.sh"] + [shlex.quote(x) for x in a.cmdline_args])
    b = Bench(a)
    global RUNNING
    RUNNING = b
    b.stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    t_start = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        say("authproxy bench%s: contenders %s; rows %s; c=%s; %d s x %d round(s)%s"
            % (" (smoke)" if a.smoke else "", ",".join(a.contenders), ",".join(a.rows),
               ",".join(map(str, a.connections)), a.duration, a.rounds,
               "; authproxy rows PROVISIONAL (no provider route)" if a.provisional else ""))
        try:
            b.start_all()
        except RuntimeError as e:
            b.failed.append(str(e))
            warn(str(e))
            return 1
        say("started: " + ", ".join("%s pid %d port %s" % (n, p.pid, b.ports.get(n, "?"))
                                    for n, p in b.procs.items()))
        if not b.preflight():
            for f in b.failed:
                warn("preflight: " + f)
            if a.smoke:
                for c in a.contenders:
                    if c in b.procs:
                        tail = b.procs[c].log_tail(5)
                        if tail:
                            warn("%s log:\n%s" % (c, tail))
                return 1
            warn("continuing: the failing contenders' rows will show it")
        b.rounds()
        b.summarize()
        if "big" in a.extras:
            say("%d MiB transfers:" % a.bigfile_mb)
            b.big_transfers()
        if "idle" in a.extras:
            say("idle keep-alive connections:")
            b.idle_connections()
        if "replay" in a.extras:
            b.replay_cost()
        if "burst" in a.extras:
            b.cold_burst()
        if "slowmint" in a.extras:
            say("a %d ms token mint on another provider:" % a.slowmint_delay_ms)
            b.slow_mint()
        for c, p in b.procs.items():
            if not p.alive():
                b.failed.append("%s exited (status %s) during the benchmark:\n%s"
                                % (c, p.p.returncode, p.log_tail()))
    finally:
        b.stop_all()

    hdr, rows = table_lines(b)
    say("")
    say(render_text(hdr, rows))
    ex = extras_lines(b)
    if ex:
        say("")
        say("\n".join(ex))
    if a.provisional:
        say("\nauthproxy* = PROVISIONAL: route without provider, wrk sends the header itself")
    problems = list(b.failed)
    for t in b.table:
        if not t.get("missing") and (t["sock_errors"] or t["non2xx"]):
            problems.append("%s %s c=%d: %d socket errors, %d non-2xx%s"
                            % (t["contender"], ROWS[t["row"]][2], t["conns"], t["sock_errors"],
                               t["non2xx"], " (authproxy's /metrics: %s)" % t["authproxy_non2xx"]
                               if t.get("authproxy_non2xx") else ""))
        if t.get("missing"):
            problems.append("%s %s c=%d: no result" % (t["contender"], ROWS[t["row"]][2], t["conns"]))
    for r in b.runs:
        if "error" in r:
            problems.append("%s %s c=%d round %d: %s" % (r["contender"], ROWS[r["row"]][2], r["conns"],
                                                         r["round"], r["error"]))
    outdir = a.out or (None if a.smoke else os.path.join(BENCH, "results", b.stamp))
    if outdir:
        os.makedirs(outdir, exist_ok=True)
        png = chart(b, outdir) if a.gnuplot else None
        b.failed = problems
        write_results(b, outdir, hdr, rows, cmdline, png)
        for name in os.listdir(b.tmp):  # proxies' logs next to the results
            if name.endswith(".log") and not name.startswith("token") and \
                    os.path.getsize(os.path.join(b.tmp, name)) > 0:
                shutil.copy(os.path.join(b.tmp, name), os.path.join(outdir, "log-" + name))
        say("\nresults: %s/results.md, raw.json%s" % (os.path.relpath(outdir, ROOT),
                                                        ", chart.png" if png else ""))
    if problems:
        say("\nproblems:")
        for p in problems:
            say("  - " + p.replace("\n", "\n    "))
    say("\nreproduce: %s    (%.0f s)" % (cmdline, time.monotonic() - t_start))
    if a.smoke:
        ok = not problems and all(not t.get("missing") and t["rps"] and t["rps"] > 0 for t in b.table)
        say("smoke: %s" % ("ok" if ok else "FAILED"))
        return 0 if ok else 1
    return 1 if b.failed and any("did not start" in f or "exited" in f for f in b.failed) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
