"""Command line and process life: --version, --help, --check, SIGTERM, SIGHUP."""
import json
import os
import signal
import threading
import time

from harness import (Conn, Mock, Proxy, assert_error, closed_port, free_port, get_json,
                     make_config, plain_route, request, run_cli, write_config)


def test_version_and_help():
    r = run_cli(["--version"])
    assert r.returncode == 0, "--version exit %d: %s" % (r.returncode, r.stderr)
    assert r.stdout.strip() or r.stderr.strip(), "--version printed nothing"
    r = run_cli(["--help"])
    assert r.returncode == 0, "--help exit %d: %s" % (r.returncode, r.stderr)
    text = r.stdout + r.stderr
    assert "-c" in text and "--check" in text, "--help does not describe -c/--check: %r" % text


def test_check_valid_config_lists_routes_and_providers():
    cfg = make_config(free_port(), [
        {"host": "plain.test", "upstream": "http://127.0.0.1:9"},
        {"path_prefix": "/gw/", "strip_prefix": True, "upstream": "http://127.0.0.1:9"},
        {"host": "api.checkprov.test", "provider": "checkprov"},
    ], providers={"checkprov": {"token_url": "https://127.0.0.1:9/token",
                                "client_id": "cid", "client_secret": "csecret-value"}})
    r = run_cli(["-c", write_config(cfg), "--check"])
    assert r.returncode == 0, "--check on a valid config exit %d: %s" % (r.returncode, r.stderr)
    out = r.stdout + r.stderr
    for s in ("plain.test", "/gw/", "api.checkprov.test", "checkprov"):
        assert s in out, "--check output does not mention %r: %r" % (s, out[:2000])
    assert "csecret-value" not in out, "--check printed the client secret"


def test_check_unknown_key_names_its_path():
    cfg = make_config(free_port(), [{"host": "api.epc.test", "provider": "epc"}],
                      providers={"epc": {"token_url": "https://127.0.0.1:9/token",
                                         "client_id": "a", "client_secret": "b",
                                         "scpoe": "pc pcapi"}})
    r = run_cli(["-c", write_config(cfg), "--check"])
    assert r.returncode != 0, "--check accepted an unknown key"
    assert "providers.epc.scpoe" in r.stderr, "stderr does not name the key path: %r" % r.stderr
    # and running with it fails as well, quickly
    r = run_cli(["-c", write_config(cfg)], timeout=20)
    assert r.returncode != 0, "the proxy started with an unknown key"
    assert "providers.epc.scpoe" in r.stderr, "stderr does not name the key path: %r" % r.stderr


def test_check_rejects_bad_configs():
    port = free_port()
    bad = [
        ("top-level unknown key", dict(make_config(port, []), listne=["x"]), "listne"),
        ("route with an unknown provider",
         make_config(port, [{"host": "a.test", "provider": "nope"}]), "nope"),
    ]
    for what, cfg, needle in bad:
        r = run_cli(["-c", write_config(cfg), "--check"])
        assert r.returncode != 0, "--check accepted a config with a %s" % what
        assert needle in r.stderr, "%s: stderr does not name %r: %r" % (what, needle, r.stderr)
    path = write_config({})
    with open(path, "w") as f:
        f.write('{"listen": ["127.0.0.1:1"], ')  # truncated JSON
    r = run_cli(["-c", path, "--check"])
    assert r.returncode != 0, "--check accepted truncated JSON"
    r = run_cli(["-c", "/nonexistent/authproxy-e2e.json", "--check"])
    assert r.returncode != 0, "--check accepted a missing file"


def test_check_lists_disabled_provider_with_its_variable():
    cfg = make_config(free_port(), [{"host": "p.test", "upstream": "https://localhost:9",
                                     "provider": "x"}],
                      providers={"x": {"token_url": "https://127.0.0.1:9/token",
                                       "client_id": "${SOME_UNSET_VAR_XYZ}",
                                       "client_secret": "s"}})
    os.environ.pop("SOME_UNSET_VAR_XYZ", None)
    path = write_config(cfg)
    r = run_cli(["-c", path, "--check"])
    out = r.stdout + r.stderr
    assert r.returncode == 0, "--check with a disabled (non-strict) provider exit %d: %s" % (
        r.returncode, out)
    assert "disabled" in out.lower(), "--check does not list the provider as disabled: %r" % out
    assert "SOME_UNSET_VAR_XYZ" in out, "--check does not name the missing variable: %r" % out
    r = run_cli(["-c", path, "--strict", "--check"])
    assert r.returncode != 0, "--strict --check accepted a disabled provider"
    assert "SOME_UNSET_VAR_XYZ" in r.stderr, "--strict error does not name the variable"


def test_sigterm_and_sigint_exit_zero():
    for sig in (signal.SIGTERM, signal.SIGINT):
        with Mock() as up:
            port = free_port()
            px = Proxy(make_config(port, [plain_route(up)]))
            try:
                get_json(port, "http://plain.test/echo")
                t0 = time.monotonic()
                os.kill(px.pid, sig)
                try:
                    rc = px.proc.wait(timeout=10)
                except Exception:
                    rc = None
                dt = time.monotonic() - t0
                assert rc == 0, "exit status after %s: %r; output: %s" % (
                    sig.name, rc, px.output()[-1000:])
                assert dt < 6, "took %.1f s to exit after %s (drain_ms is 1000)" % (dt, sig.name)
            finally:
                px.stop()


def test_sigterm_finishes_in_flight_request():
    with Mock() as up:
        port = free_port()
        px = Proxy(make_config(port, [plain_route(up)], limits={"drain_ms": 5000}))
        try:
            result = {}

            def slow():
                try:
                    result["r"] = request(port, "GET", "http://plain.test/sleep?ms=800",
                                          timeout=10)
                except Exception as e:  # noqa: BLE001
                    result["e"] = e

            th = threading.Thread(target=slow)
            th.start()
            time.sleep(0.3)  # the request is in flight upstream
            os.kill(px.pid, signal.SIGTERM)
            th.join(15)
            assert not th.is_alive(), "in-flight request never finished"
            assert "e" not in result, "in-flight request failed after SIGTERM: %r" % result.get("e")
            st, _, body = result["r"]
            assert st == 200 and body == b"slept", "in-flight request: %d %r" % (st, body)
            try:
                rc = px.proc.wait(timeout=10)
            except Exception:
                rc = None
            assert rc == 0, "exit status after drain: %r" % rc
        finally:
            px.stop()


def test_sighup_reload_keeps_connections():
    with Mock() as up:
        port = free_port()
        cfg = make_config(port, [plain_route(up)])
        px = Proxy(cfg)
        try:
            with Conn(port) as c:
                c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n")
                r = c.read_response()
                assert r is not None and r.status == 200, "before reload: %r" % r
                st, _, _ = request(port, "GET", "http://new.test/echo")
                assert st == 403, "new.test answered %d before it was configured" % st
                cfg2 = make_config(port, [plain_route(up), plain_route(up, "new.test")])
                with open(px.cfg_path, "w") as f:
                    json.dump(cfg2, f)
                os.kill(px.pid, signal.SIGHUP)
                deadline = time.monotonic() + 10
                st = None
                while time.monotonic() < deadline:
                    st, _, _ = request(port, "GET", "http://new.test/echo")
                    if st == 200:
                        break
                    time.sleep(0.1)
                assert st == 200, "new route not served after SIGHUP (last status %s)" % st
                # the connection opened before the reload still works
                c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n")
                r = c.read_response()
                assert r is not None and r.status == 200, "old connection after reload: %r" % r
            assert px.alive(), "proxy died on SIGHUP"
        finally:
            px.stop()


def _disabled_provider_config(log):
    os.environ.pop("SOME_UNSET_VAR_XYZ", None)
    cfg = make_config(free_port(), [{"host": "p.test", "upstream": "https://localhost:9",
                                     "provider": "x"}],
                      providers={"x": {"token_url": "https://127.0.0.1:%d/token" % closed_port(),
                                       "client_id": "${SOME_UNSET_VAR_XYZ}",
                                       "client_secret": "s"}})
    cfg["log"] = log
    return cfg


def test_provider_disabled_502_and_startup_warning():
    cfg = _disabled_provider_config({"level": "info", "format": "text"})
    with Proxy(cfg) as px:
        st, hdrs, body = request(px.port, "GET", "http://p.test/anything")
        obj = assert_error((st, hdrs, body), 502, "provider_disabled")
        assert "SOME_UNSET_VAR_XYZ" in obj["detail"], "detail does not name the variable: %r" % obj
        assert obj.get("provider") == "x", "error does not name the provider: %r" % obj
        out = px.output()
        assert "SOME_UNSET_VAR_XYZ" in out, \
            "no startup warning naming the variable: %r" % out[-1000:]


def test_json_log_lines_and_level_filter():
    # every line is one JSON object, the disabled provider's warning included
    px = Proxy(_disabled_provider_config({"level": "info", "format": "json"}))
    try:
        assert request(px.port, "GET", "http://p.test/x")[0] == 502
    finally:
        px.stop()
    lines = [x for x in px.output().splitlines() if x.strip()]
    assert lines, "nothing logged at level info"
    objs = []
    for x in lines:
        try:
            objs.append(json.loads(x))
        except ValueError:
            raise AssertionError("a log line is not JSON: %r" % x)
    assert all(set(o) >= {"ts", "level", "msg"} for o in objs), objs
    warns = [o for o in objs if o["level"] == "warn" and "SOME_UNSET_VAR_XYZ" in o["msg"]]
    assert len(warns) == 1, "the disabled provider's warning, once, as JSON: %r" % objs
    # level error: neither the info lines nor the warning
    px = Proxy(_disabled_provider_config({"level": "error", "format": "text"}))
    try:
        assert request(px.port, "GET", "http://p.test/x")[0] == 502
    finally:
        px.stop()
    out = px.output()
    assert "SOME_UNSET_VAR_XYZ" not in out and " info " not in out, \
        "lines below level error were logged: %r" % out[-1000:]


def test_strict_holds_for_reloads():
    with Mock() as up:
        port = free_port()
        cfg = make_config(port, [plain_route(up)])
        px = Proxy(cfg, args=("--strict",))
        try:
            bad = make_config(port, [plain_route(up), plain_route(up, "new.test")],
                              providers={"x": {"token_url": "https://127.0.0.1:9/token",
                                               "client_id": "${SOME_UNSET_VAR_XYZ}",
                                               "client_secret": "s"}})
            os.environ.pop("SOME_UNSET_VAR_XYZ", None)
            with open(px.cfg_path, "w") as f:
                json.dump(bad, f)
            os.kill(px.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "reload failed" not in px.output() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "reload failed" in px.output() and "SOME_UNSET_VAR_XYZ" in px.output(), \
                "--strict: a reload with a missing variable was not refused: %r" % (
                    px.output()[-800:])
            assert request(port, "GET", "http://new.test/echo")[0] == 403, \
                "the refused configuration's route is served"
            assert request(port, "GET", "http://plain.test/echo")[0] == 200
        finally:
            px.stop()


def test_check_without_routes_is_valid():
    # a configuration with a provider and no route yet: valid (authproxy runs and refuses every
    # request with 403 no_route), and --check says what it sees
    cfg = _disabled_provider_config({"level": "info", "format": "text"})
    cfg["routes"] = []
    r = run_cli(["-c", write_config(cfg), "--check"])
    assert r.returncode == 0, "--check exit %d: %s" % (r.returncode, r.stdout + r.stderr)
    assert "disabled" in r.stdout and "no routes" in r.stdout, r.stdout


def test_check_non_loopback_listen_needs_allow_remote():
    port = free_port()
    cfg = make_config(port, [{"host": "a.test", "upstream": "http://127.0.0.1:9"}])
    cfg["listen"] = ["0.0.0.0:%d" % port]
    r = run_cli(["-c", write_config(cfg), "--check"])
    assert r.returncode != 0, "a non-loopback listen address was accepted without allow_remote"
    assert "allow_remote" in r.stderr, "the error does not mention allow_remote: %r" % r.stderr
    cfg["allow_remote"] = True
    r = run_cli(["-c", write_config(cfg), "--check"])
    assert r.returncode == 0, "allow_remote: true still refused: %r" % r.stderr


def test_shipped_configurations_check_and_never_print_secrets():
    """Every file in conf/ validates: with its variables unset the providers are disabled (and
    --check names the variable); with them set every provider is enabled, and no value that is a
    secret appears in the output."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    confdir = os.path.join(root, "conf")
    files = sorted(f for f in os.listdir(confdir) if f.endswith(".json"))
    assert {"authproxy.json", "epc.json", "eptura.json", "enable.json"} <= set(files), files
    names = ("DEMO_CLIENT_ID", "DEMO_CLIENT_SECRET", "EPC_CLIENT_ID", "EPC_CLIENT_SECRET",
             "EPTURA_SITE", "EPTURA_CLIENT_ID", "EPTURA_USER", "EPTURA_PASSWORD",
             "ENABLE_CLIENT_ID", "ENABLE_CLIENT_SECRET", "ENABLE_REGISTRATION_ID")
    secrets = {n: "s3cr3t-%s-value" % n.lower().replace("_", "-") for n in names}
    secrets["EPTURA_SITE"] = "https://site.example"
    for f in files:
        path = os.path.join(confdir, f)
        if any(n in os.environ for n in names):
            continue  # someone exported the real variables: only the second half applies
        r = run_cli(["-c", path, "--check"])
        assert r.returncode == 0, "%s: --check exit %d: %s" % (f, r.returncode, r.stderr)
        out = r.stdout + r.stderr
        assert "disabled" in out and "is not set" in out, "%s: unset variables: %r" % (f, out)
        r = run_cli(["-c", path, "--check"], env=secrets)
        out = r.stdout + r.stderr
        assert r.returncode == 0, "%s with variables: exit %d: %s" % (f, r.returncode, out)
        assert "disabled" not in out, "%s: a provider stays disabled: %r" % (f, out)
        for n, v in secrets.items():
            if n in ("EPTURA_SITE",):
                continue
            assert v not in out, "%s: --check printed %s" % (f, n)
