#!/usr/bin/env python3
"""Long differential runs with random seeds (what `make stress` is for).

    python3 tests/stress.py [--minutes 10] [--scale 3] [--asan-every 3] [--seed N] [--no-build]

Runs tests/e2e/test_differential.py (one process per run, through the runner's --one mode, so
the runner's own 60 s limit does not apply) again and again until --minutes have passed, each
time with a new random seed and AUTHPROXY_DIFF_SCALE=--scale, against build/authproxy and,
every --asan-every runs, build/authproxy-asan. Each test run compares four proxies itself
(plain and TLS upstream, io_uring as the environment gives it and off). A run fails on the
test's assertion, a sanitizer report in a proxy log, or its time limit; the line
"FAIL seed=N ..." then says how to replay it and where its logs are (kept). --seed N repeats
one seed instead. The last line is "N passed, N failed"; the exit status is 1 if any failed.
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
E2E = os.path.join(TESTS, "e2e")
sys.path.insert(0, TESTS)
sys.path.insert(0, E2E)

import run as runner  # noqa: E402  (run_one: the runner's own)


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def one_run(seed, scale, binary, asan, certdir, tmp):
    """Returns (ok, reason or the test's summary line, seconds, logdir): the runner's run_one,
    with a time limit for the scale."""
    env = dict(os.environ)
    for k in ("AUTHPROXY_DIFF_ONLY", "AUTHPROXY_DIFF_CONFIGS", "AUTHPROXY_IO_URING"):
        env.pop(k, None)
    env.update({"AUTHPROXY_BIN": binary, "AUTHPROXY_ASAN": "1" if asan else "0",
                "AUTHPROXY_DIFF_SEED": str(seed), "AUTHPROXY_DIFF_SCALE": str(scale),
                "AUTHPROXY_CERTDIR": certdir, "PYTHONDONTWRITEBYTECODE": "1"})
    ok, why, dt, logdir = runner.run_one("test_differential", "test_differential", True, env,
                                         tmp, timeout=60 * max(1.0, scale) + 90)
    if ok:
        with open(os.path.join(logdir, "output.txt")) as f:
            why = (f.read().strip().splitlines() or [""])[0]
    return ok, why, dt, logdir


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--scale", type=float, default=3.0,
                    help="AUTHPROXY_DIFF_SCALE of each run (default 3)")
    ap.add_argument("--asan-every", type=int, default=3,
                    help="every Nth run uses the ASan build (0: never; default 3)")
    ap.add_argument("--seed", type=int, help="repeat this seed instead of random ones")
    ap.add_argument("--no-build", action="store_true",
                    help="do not run make build/authproxy build/authproxy-asan first")
    a = ap.parse_args()

    release = os.environ.get("AUTHPROXY_RELEASE_BIN") or os.path.join(ROOT, "build", "authproxy")
    asan_bin = os.environ.get("AUTHPROXY_ASAN_BIN") or os.path.join(ROOT, "build",
                                                                    "authproxy-asan")
    passed = failed = 0
    tmp = tempfile.mkdtemp(prefix="authproxy-stress-")
    try:
        if not a.no_build:
            r = subprocess.run(["make", "build/authproxy", "build/authproxy-asan"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
            if r.returncode != 0:
                say("FAIL build: %s" % r.stdout.decode("utf-8", "replace")[-800:])
                failed += 1
                a.minutes = 0
        certdir = os.path.join(tmp, "certs")
        import harness
        harness.generate_certs(certdir)
        rnd = random.SystemRandom()
        end = time.monotonic() + a.minutes * 60
        k = 0
        while time.monotonic() < end:
            k += 1
            seed = a.seed if a.seed is not None else rnd.randrange(1, 1 << 31)
            asan = a.asan_every > 0 and k % a.asan_every == 0
            binary = asan_bin if asan else release
            flavour = "asan" if asan else "release"
            if not os.path.exists(binary):
                say("FAIL seed=%d (%s): %s not built" % (seed, flavour, binary))
                failed += 1
                break
            say("run %d: seed=%d %s scale %s" % (k, seed, flavour, a.scale))
            ok, why, dt, logdir = one_run(seed, a.scale, binary, asan, certdir, tmp)
            if ok:
                passed += 1
                shutil.rmtree(logdir, ignore_errors=True)
                say("ok   seed=%d %s (%.1f s): %s" % (seed, flavour, dt, why))
            else:
                failed += 1
                say("FAIL seed=%d %s (%.1f s): %s" % (seed, flavour, dt, why))
                say("     replay: AUTHPROXY_DIFF_SEED=%d AUTHPROXY_DIFF_SCALE=%s%s python3 "
                    "tests/run.py --one test_differential test_differential (logs: %s)" % (
                        seed, a.scale, " AUTHPROXY_ASAN=1 AUTHPROXY_BIN=build/authproxy-asan"
                        if asan else "", logdir))
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        if failed == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            say("logs of the failing runs: %s" % tmp)
        say("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
