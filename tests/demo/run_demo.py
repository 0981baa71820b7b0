#!/usr/bin/env python3
"""`make run`: starts the demo provider and API, then authproxy on conf/authproxy.json, and
stops everything it started (by pid) on Ctrl-C or when authproxy exits."""
import os
import secrets
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    env = dict(os.environ)
    env.setdefault("DEMO_CLIENT_ID", "demo-client")
    env.setdefault("DEMO_CLIENT_SECRET", secrets.token_urlsafe(18))
    demo = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests/demo/demo_services.py"),
                             "9801", "9802"], env=env)
    time.sleep(0.5)
    print("try:  curl -x http://127.0.0.1:8080 http://api.demo.localhost/whoami", flush=True)
    proxy = subprocess.Popen([os.path.join(ROOT, "build/authproxy"), "-c",
                              os.path.join(ROOT, "conf/authproxy.json")], env=env)
    signal.signal(signal.SIGINT, lambda *a: None)  # Ctrl-C reaches the children too
    signal.signal(signal.SIGTERM, lambda *a: proxy.send_signal(signal.SIGTERM))
    try:
        rc = proxy.wait()
    finally:
        for p in (proxy, demo):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
    sys.exit(rc)


if __name__ == "__main__":
    main()
