"""The `make run` demo: conf/authproxy.json with the bundled demo provider and API (on free
ports here) answers `curl -x ... http://api.demo.localhost/whoami` with a token minted by the
demo provider, and the disabled real providers answer 502 provider_disabled."""
import json
import os
import secrets
import subprocess
import sys
import time

from harness import Proxy, curl, free_port, stop_process, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_mints_and_attaches_a_token():
    with open(os.path.join(ROOT, "conf", "authproxy.json")) as f:
        cfg = json.load(f)
    tport, aport, pport, admin = free_port(), free_port(), free_port(), free_port()
    cfg["listen"] = ["127.0.0.1:%d" % pport]
    cfg["admin_listen"] = "127.0.0.1:%d" % admin
    cfg["via"] = "authproxy-demo-test"
    cfg["providers"]["demo"]["token_url"] = "http://127.0.0.1:%d/token" % tport
    for r in cfg["routes"]:
        if r.get("provider") == "demo":
            r["upstream"] = "http://127.0.0.1:%d" % aport
    env = {"DEMO_CLIENT_ID": "demo-client", "DEMO_CLIENT_SECRET": secrets.token_urlsafe(18)}
    demo = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "demo", "demo_services.py"),
                             str(tport), str(aport)], env=dict(os.environ, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_port(aport, time.monotonic() + 10, demo), "demo services did not start"
        with Proxy(cfg, env=env) as px:
            url = "http://api.demo.localhost/whoami"
            first = curl(["-x", "http://127.0.0.1:%d" % pport, url])
            second = curl(["-x", "http://127.0.0.1:%d" % pport, url])
            for r in (first, second):
                assert r.returncode == 0, r.stderr
                body = json.loads(r.stdout)
                assert body["authenticated"] is True and body["client"] == "demo-client", body
                assert body["via"] == "1.1 authproxy-demo-test", body
            assert json.loads(first.stdout)["token_sha256"] == \
                json.loads(second.stdout)["token_sha256"], "the cached token was not reused"
            r = curl(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-x",
                      "http://127.0.0.1:%d" % pport, "http://api.elliemae.com/x"])
            assert r.stdout.strip() == b"502", "EPC without its variables: %r" % r.stdout
            out = px.output()
            assert env["DEMO_CLIENT_SECRET"] not in out, "the demo secret reached the log"
    finally:
        stop_process(demo, 5)
