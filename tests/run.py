#!/usr/bin/env python3
"""authproxy test runner (what `make test` calls after building).

  python3 tests/run.py            unit tests, e2e on build/authproxy, then on build/authproxy-asan,
                                  then on build/authproxy with AUTHPROXY_IO_URING=0, the modules
                                  that move bytes (SEND_SKIP lists the others; --no-send skips)
  python3 tests/run.py -k NAME            only e2e tests whose name contains NAME (no unit tests)
  python3 tests/run.py --release-only / --asan-only / --no-unit / -j N (tests at once)
  (AUTHPROXY_RELEASE_BIN / AUTHPROXY_ASAN_BIN override the binaries, AUTHPROXY_E2E_DIR the tests)

Every e2e test runs in its own process group with a hard timeout, up to -j (default 3,
AUTHPROXY_TEST_JOBS) at once, heavy ones alone; the proxy's stderr is scanned
for sanitizer reports after every test. The last line of output is always "N passed, N failed".
"""
import argparse
import importlib
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E2E = os.environ.get("AUTHPROXY_E2E_DIR") or os.path.join(ROOT, "tests", "e2e")
TIMEOUT = 60
HEAVY_TIMEOUT = 180
SEND_SKIP = ("test_cli", "test_demo", "test_secrets", "test_tokens_failures", "test_tokens_mock",
             "test_tokens_ops", "test_tokens_presets")
BUDGET_S = 540  # the whole run must stay well under 10 minutes
SANITIZER_PATTERNS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_unit():
    """Returns (passed, failed)."""
    path = os.path.join(ROOT, "build", "unit-tests")
    if not os.path.exists(path):
        say("FAIL unit: %s does not exist" % os.path.relpath(path, ROOT))
        return 0, 1
    try:
        r = subprocess.run([path], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=300)
    except subprocess.TimeoutExpired:
        say("FAIL unit: timed out after 300 s")
        return 0, 1
    out = r.stdout.decode("utf-8", "replace")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    m = re.match(r"^\s*(\d+) passed, (\d+) failed\s*$", lines[-1]) if lines else None
    if not m:
        say("FAIL unit: no 'N passed, N failed' line (exit %d): %s"
            % (r.returncode, " | ".join(lines[-5:])[-500:]))
        return 0, 1
    passed, failed = int(m.group(1)), int(m.group(2))
    for ln in lines[:-1]:
        if ln.startswith("FAIL") or "FAIL" in ln.split(" ", 1)[0]:
            say("FAIL unit: " + ln.strip())
    san = [ln for ln in lines if any(p in ln for p in SANITIZER_PATTERNS)]
    if san:
        say("FAIL unit: sanitizer report: " + san[0].strip())
        failed += 1
    if r.returncode != 0 and failed == 0:
        say("FAIL unit: exit status %d with 0 failures reported" % r.returncode)
        failed = 1
    say("%s unit (%d passed, %d failed)" % ("ok  " if failed == 0 else "FAIL", passed, failed))
    return passed, failed


def discover(name_filter=None):
    """[(module, func_name, heavy)] in file order, then definition order."""
    sys.path.insert(0, E2E)
    tests, problems = [], []
    for fn in sorted(os.listdir(E2E)):
        if not (fn.startswith("test_") and fn.endswith(".py")):
            continue
        mod_name = fn[:-3]
        try:
            mod = importlib.import_module(mod_name)
        except Exception as e:  # a broken module is a failure, not a crash of the runner
            problems.append((mod_name, "import failed: %s: %s" % (type(e).__name__, e)))
            continue
        funcs = [(getattr(f, "__code__").co_firstlineno, n, f)
                 for n, f in vars(mod).items()
                 if n.startswith("test_") and inspect.isfunction(f) and f.__module__ == mod_name]
        for _, n, f in sorted(funcs):
            if name_filter and name_filter not in n and name_filter not in mod_name:
                continue
            tests.append((mod_name, n, bool(getattr(f, "heavy", False))))
    return tests, problems


def scan_sanitizer(logdir):
    for fn in sorted(os.listdir(logdir)):
        if not fn.startswith("proxy"):
            continue
        try:
            with open(os.path.join(logdir, fn), "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        for line in text.splitlines():
            if any(p in line for p in SANITIZER_PATTERNS):
                return "%s: %s" % (fn, line.strip()[:300])
    return None


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_group(pgid):
    """Kills the process group this runner created for one test (its id, not a name)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not group_alive(pgid):
            return
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        for _ in range(50):
            if not group_alive(pgid):
                return
            time.sleep(0.1)


def run_one(mod, name, heavy, env, tmp, timeout=None):
    """Runs one test in a child process; returns (ok, reason, seconds, its log directory). Its
    output is kept there as output.txt. timeout: the hard limit (default by heavy)."""
    flavour = "-asan" if env.get("AUTHPROXY_ASAN") == "1" else ""
    logdir = tempfile.mkdtemp(prefix="%s%s-" % (name, flavour), dir=tmp)
    e = dict(env)
    e["AUTHPROXY_LOGDIR"] = logdir
    timeout = timeout or (HEAVY_TIMEOUT if heavy else TIMEOUT)
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--one", mod, name],
                         cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        # SIGTERM first: the test turns it into an exception and its finally blocks stop
        # the proxy and the mock; then the whole group goes.
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            out, _ = p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            kill_group(p.pid)
            out, _ = p.communicate(timeout=10)
        kill_group(p.pid)
        return False, "hard timeout after %d s" % timeout, time.monotonic() - t0, logdir
    leaked = group_alive(p.pid)
    kill_group(p.pid)
    dt = time.monotonic() - t0
    out = out.decode("utf-8", "replace")
    with open(os.path.join(logdir, "output.txt"), "w") as f:
        f.write(out)
    san = scan_sanitizer(logdir)
    if rc != 0:
        reason = out.strip().splitlines()[-1] if out.strip() else "exit status %d" % rc
        # show the assertion message (last line of the traceback)
        return False, reason[:1500] + ((" | sanitizer: " + san) if san else ""), dt, logdir
    if san:
        return False, "sanitizer report: " + san, dt, logdir
    if leaked:
        return False, "test left processes running (killed)", dt, logdir
    return True, "", dt, logdir


def one(mod, name):
    """Child side: run a single test function."""
    sys.path.insert(0, E2E)

    def on_term(signum, frame):
        raise KeyboardInterrupt("terminated by the runner (hard timeout)")

    signal.signal(signal.SIGTERM, on_term)
    m = importlib.import_module(mod)
    fn = getattr(m, name)
    try:
        fn()
    except AssertionError as e:
        import traceback
        tb = traceback.extract_tb(e.__traceback__)
        where = ""
        for fr in reversed(tb):
            if os.path.basename(fr.filename).startswith("test_"):
                where = "%s:%d: " % (os.path.basename(fr.filename), fr.lineno)
                break
        sys.stdout.write("%sAssertionError: %s\n" % (where, str(e).replace("\n", " | ")))
        return 1
    except BaseException as e:
        import traceback
        traceback.print_exc(file=sys.stdout)
        sys.stdout.write("%s: %s\n" % (type(e).__name__, str(e).replace("\n", " | ")))
        return 1
    return 0


def run_jobs(jobs, n_jobs, started, tmp):
    """Runs the e2e tests, up to n_jobs at once (they mostly wait on sockets and timers; each
    has its own ports, processes and log directory); a heavy test (1 GiB transfers, memory
    bounds) runs alone. Prints each result as it ends. Returns (passed, failed)."""
    import concurrent.futures as cf
    passed = failed = 0
    pending = list(jobs)
    running = {}  # future -> job

    def finish(fut):
        nonlocal passed, failed
        label = running.pop(fut)[0]
        ok, why, dt, ldir = fut.result()
        if ok:
            shutil.rmtree(ldir, ignore_errors=True)
            passed += 1
            say("ok   %s" % label)
        else:
            failed += 1
            say("FAIL %s (%.1fs): %s" % (label, dt, why))

    with cf.ThreadPoolExecutor(max_workers=max(1, n_jobs)) as pool:
        while pending or running:
            job = pending[0] if pending else None
            heavy_running = any(j[3] for j in running.values())
            can_start = (job is not None and not heavy_running and len(running) < n_jobs
                         and not (job[3] and running))
            if can_start:
                pending.pop(0)
                label, mod, name, heavy, e = job
                if time.monotonic() - started > BUDGET_S:
                    say("FAIL %s: not run, the run exceeded its %d s budget" % (label, BUDGET_S))
                    failed += 1
                    continue
                running[pool.submit(run_one, mod, name, heavy, e, tmp)] = job
                continue
            done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                finish(fut)
    return passed, failed


def run_bench_smoke():
    """bench/run.sh --smoke: every contender starts and answers 2xx (no timing is judged)."""
    try:
        r = subprocess.run([os.path.join(ROOT, "bench", "run.sh"), "--smoke"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=180)
    except subprocess.TimeoutExpired:
        say("FAIL bench/smoke: timed out after 180 s")
        return 0, 1
    out = r.stdout.decode("utf-8", "replace").strip().splitlines()
    if r.returncode == 0 and out and out[-1].strip() == "smoke: ok":
        say("ok   bench/smoke")
        return 1, 0
    say("FAIL bench/smoke (exit %d): %s" % (r.returncode, " | ".join(out[-6:])[-600:]))
    return 0, 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=2, metavar=("MODULE", "TEST"))
    ap.add_argument("-k", dest="filter")
    ap.add_argument("--release-only", action="store_true")
    ap.add_argument("--asan-only", action="store_true")
    ap.add_argument("--no-unit", action="store_true")
    ap.add_argument("--no-bench", action="store_true", help="skip the benchmark smoke run")
    ap.add_argument("--no-send", action="store_true",
                    help="skip the release run with one send() per write (AUTHPROXY_IO_URING=0)")
    ap.add_argument("-v", action="store_true", help="print the output of failing tests")
    ap.add_argument("-j", dest="jobs", type=int,
                    default=int(os.environ.get("AUTHPROXY_TEST_JOBS", "3")),
                    help="e2e tests run at once (heavy ones alone; default 3)")
    a = ap.parse_args()
    if a.one:
        sys.exit(one(*a.one))

    started = time.monotonic()
    passed = failed = 0
    tmp = None
    try:
        if not (a.filter or a.no_unit):
            p, f = run_unit()
            passed += p
            failed += f

        tests, problems = discover(a.filter)
        names = [n for _, n, _ in tests]
        dups = sorted({n for n in names if names.count(n) > 1})
        for mod, why in problems:
            say("FAIL e2e/%s: %s" % (mod, why))
            failed += 1
        for d in dups:
            say("FAIL e2e/%s: test name defined in several modules" % d)
            failed += 1

        tmp = tempfile.mkdtemp(prefix="authproxy-e2e-")
        certdir = os.path.join(tmp, "certs")
        sys.path.insert(0, E2E)
        env = dict(os.environ)
        env["AUTHPROXY_CERTDIR"] = certdir
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        try:
            import harness
            harness.generate_certs(certdir)
        except Exception as e:
            say("FAIL e2e/certificates: %s" % e)
            failed += 1

        # release and ASan with writes batched through io_uring (where the kernel allows it),
        # and release again with one send() per write (AUTHPROXY_IO_URING=0), the path taken
        # where io_uring is refused
        release = os.environ.get("AUTHPROXY_RELEASE_BIN") or os.path.join(ROOT, "build", "authproxy")
        flavours = []
        if not a.asan_only:
            flavours.append(("", release, "0", None))
        if not a.release_only:
            flavours.append((" [asan]", os.environ.get("AUTHPROXY_ASAN_BIN")
                             or os.path.join(ROOT, "build", "authproxy-asan"), "1", None))
        if not (a.asan_only or a.no_send):
            flavours.append((" [send]", release, "0", "0"))
        jobs = []  # (label, mod, name, heavy, env) in the order they are listed
        for tag, binary, asan, ring in flavours:
            # the plain-calls pass covers the modules that move bytes; the token engine's own
            # modules (libcurl, presets, CLI) do not touch sock.c's two paths differently
            skip = SEND_SKIP if ring == "0" else ()
            e = dict(env)
            e["AUTHPROXY_BIN"] = binary
            e["AUTHPROXY_ASAN"] = asan
            if ring is not None:
                e["AUTHPROXY_IO_URING"] = ring
            missing = not os.path.exists(binary)
            for mod, name, heavy in tests:
                if mod in skip:
                    continue
                label = "e2e/%s%s" % (name, tag)
                if missing:
                    say("FAIL %s: %s not built" % (label, os.path.relpath(binary, ROOT)))
                    failed += 1
                    continue
                jobs.append((label, mod, name, heavy, e))
        p, f = run_jobs(jobs, a.jobs, started, tmp)
        passed += p
        failed += f
        if not (a.filter or a.no_bench or a.asan_only):
            p, f = run_bench_smoke()
            passed += p
            failed += f
        if tmp and failed:
            say("logs of the failing e2e tests: %s" % tmp)
        elif tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        say("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
