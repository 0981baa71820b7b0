"""Secrets never leave the process: not in --check, logs, errors; tokens only go upstream."""
import base64
import json
import os
import secrets

from harness import (Mock, Proxy, closed_port, free_port, logdir, make_config, request,
                     run_cli)


def _setup(mock, secret_env, secret_file_path, dead_port):
    providers = {
        "envsec": {"token_url": "https://localhost:%d/token" % mock.port,
                   "client_id": "client-env", "client_secret": "${AP_E2E_SECRET}",
                   "client_auth": "basic"},
        "filesec": {"token_url": "https://localhost:%d/token_reject" % mock.port,
                    "client_id": "client-file", "client_secret_file": secret_file_path,
                    "client_auth": "body"},
        "deadsec": {"token_url": "https://127.0.0.1:%d/token" % dead_port,
                    "client_id": "client-dead", "client_secret": "${AP_E2E_SECRET}"},
    }
    up = "https://localhost:%d" % mock.port
    routes = [{"host": "env.test", "upstream": up, "provider": "envsec"},
              {"host": "file.test", "upstream": up, "provider": "filesec"},
              {"host": "dead.test", "upstream": up, "provider": "deadsec"}]
    cfg = make_config(free_port(), routes, providers)
    cfg["log"] = {"level": "debug", "format": "text"}
    return cfg


def test_secrets_never_leak():
    secret_env = "envSecret-" + secrets.token_hex(16)
    secret_file = "fileSecret-" + secrets.token_hex(16)
    token = "tok-" + secrets.token_hex(16)
    path = os.path.join(logdir(), "client_secret")
    with open(path, "w") as f:
        f.write(secret_file + "\n")
    env = {"AP_E2E_SECRET": secret_env}
    seen = []
    with Mock(tls=True, token=token) as up:
        cfg = _setup(up, secret_env, path, closed_port())
        from harness import write_config
        r = run_cli(["-c", write_config(cfg), "--check"], env=env)
        seen.append(("--check stdout", r.stdout))
        seen.append(("--check stderr", r.stderr))
        assert r.returncode == 0, "--check failed: %s" % r.stderr
        for name in ("envsec", "filesec", "deadsec"):
            assert name in r.stdout + r.stderr, "--check does not list provider %s" % name
        with Proxy(cfg, env=env) as px:
            results = {}
            for host in ("env.test", "file.test", "dead.test", "env.test"):
                st, hdrs, body = request(px.port, "GET", "http://%s/echo" % host,
                                         headers={"Authorization": "Bearer client-own"},
                                         timeout=15)
                results[host] = (st, hdrs, body)
                text = body.decode("utf-8", "replace")
                if not (host == "env.test" and st == 200):  # the echo shows the token upstream
                    seen.append(("%s response body" % host, text))
                seen.append(("%s response headers" % host, repr(hdrs)))
            px.stop()
            seen.append(("proxy output", px.output()))
        for what, text in seen:
            for label, s in (("client secret from env", secret_env),
                             ("client secret from file", secret_file),
                             ("token", token)):
                assert s not in text, "%s appears in %s" % (label, what)
            # nor in base64 (Basic auth) form
            b64 = base64.b64encode(("client-env:" + secret_env).encode()).decode()
            assert b64 not in text, "Basic credentials appear in %s" % what
        # the secrets were resolved (the providers are not disabled) and failures are errors
        for host, (st, hdrs, body) in results.items():
            if st == 200:
                continue
            obj = json.loads(body)
            assert obj.get("error") != "provider_disabled", \
                "%s: the secret (env or file) was not resolved: %r" % (host, obj)
            assert obj.get("provider"), "%s: error without provider: %r" % (host, obj)
        assert results["dead.test"][0] == 503, "dead provider -> %d" % results["dead.test"][0]


# test_token_minted_and_attached_upstream lives in test_tokens_cache.py (with the mock
# providers), like every token test.
