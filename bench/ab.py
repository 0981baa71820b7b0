#!/usr/bin/env python3
"""Two authproxy builds side by side: which one costs less CPU per request?

One run of bench/run.sh (reverse 64 B, c=50) starts the backend, the token endpoint and build A
on the proxy CPU; this script starts build B with the same configuration on a free port, also on
the proxy CPU, and drives it with its own wrk on the client CPU. Over the same window both
proxies' CPU time (utime+stime from /proc) and requests served (their /metrics) are read, so
whatever the machine does to one it does to the other: on a VM whose speed drifts between runs
this separates a 2 % difference that sequential runs cannot. Rounds alternate which build the
benchmark starts.

    bench/ab.py build/authproxy /tmp/authproxy-before [--rounds 4] [--window 15]

Development tool; not part of make test or make bench (it depends on timings). Talks only to
127.0.0.1, stops what it starts by pid.
"""
import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def served(admin_port):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin_port, timeout=5).read()
    return sum(float(line.split()[-1]) for line in text.decode().splitlines()
               if line.startswith("authproxy_requests_total"))


def cpu_s(pid):
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(p):
    if p and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def one_round(first, second, window, tmp, args):
    """first is started by bench/run.sh, second by us. Returns {binary: cpu_us_per_req}."""
    log_path = os.path.join(tmp, "bench.log")
    with open(log_path, "w") as log:
        bench = subprocess.Popen(
            [os.path.join(HERE, "run.sh"), "-r", "1", "-d", str(window + 20), "-c", "50",
             "--rows", "rev64", "--contenders", "authproxy", "--no-extras", "--authproxy", first,
             "--client-cpu", args.client_cpu, "--proxy-cpu", args.proxy_cpu,
             "--out", os.path.join(tmp, "bench-out")],
            stdout=log, stderr=subprocess.STDOUT)
    mine = wrk = None
    try:
        pid_a = None
        for _ in range(300):  # bounded: 30 s for the benchmark to start its authproxy
            time.sleep(0.1)
            m = re.search(r"authproxy pid (\d+) port (\d+)", open(log_path).read())
            if m:
                pid_a = int(m.group(1))
                break
            if bench.poll() is not None:
                break
        if not pid_a:
            raise RuntimeError("the benchmark did not start:\n" + open(log_path).read()[-2000:])
        time.sleep(1.0)
        argv = open("/proc/%d/cmdline" % pid_a).read().split("\0")
        conf = json.load(open(argv[argv.index("-c") + 1]))
        admin_a = int(conf["admin_listen"].rsplit(":", 1)[1])
        port_b, admin_b = free_port(), free_port()
        conf["listen"] = ["127.0.0.1:%d" % port_b]
        conf["admin_listen"] = "127.0.0.1:%d" % admin_b
        conf_b = os.path.join(tmp, "b.json")
        with open(conf_b, "w") as f:
            json.dump(conf, f)
        mine = subprocess.Popen(["taskset", "-c", args.proxy_cpu, second, "-c", conf_b],
                                env=dict(os.environ, BENCH_SECRET="ab"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):  # bounded: 10 s to answer
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/64" % port_b, timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        wrk = subprocess.Popen(["timeout", str(window + 30), "taskset", "-c", args.client_cpu,
                                "wrk", "-t1", "-c50", "-d%ds" % (window + 6),
                                "http://127.0.0.1:%d/64" % port_b],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        r0, c0 = (served(admin_a), served(admin_b)), (cpu_s(pid_a), cpu_s(mine.pid))
        time.sleep(window)
        r1, c1 = (served(admin_a), served(admin_b)), (cpu_s(pid_a), cpu_s(mine.pid))
        out = {}
        for i, name in enumerate((first, second)):
            n = r1[i] - r0[i]
            out[name] = ((c1[i] - c0[i]) * 1e6 / n if n else float("nan"), n / window)
        return out
    finally:
        if wrk:
            wrk.wait()
        stop(mine)
        try:
            bench.wait(timeout=window + 90)
        except subprocess.TimeoutExpired:
            stop(bench)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--window", type=int, default=15, help="seconds measured per round")
    ap.add_argument("--client-cpu", default="0")
    ap.add_argument("--proxy-cpu", default="1")
    args = ap.parse_args()
    a, b = os.path.abspath(args.a), os.path.abspath(args.b)
    diffs = []
    with tempfile.TemporaryDirectory(prefix="authproxy-ab-") as tmp:
        for r in range(args.rounds):
            first, second = (a, b) if r % 2 == 0 else (b, a)
            res = one_round(first, second, args.window, tmp, args)
            (ca, ra), (cb, rb) = res[a], res[b]
            diffs.append(cb / ca)
            print("round %d: A %.2f us/req (%.0f req/s)  B %.2f us/req (%.0f req/s)  B/A %.3f"
                  % (r + 1, ca, ra, cb, rb, cb / ca), flush=True)
    print("B/A CPU per request: median %.3f, range %.3f-%.3f over %d rounds"
          % (statistics.median(diffs), min(diffs), max(diffs), len(diffs)))


if __name__ == "__main__":
    sys.exit(main())
