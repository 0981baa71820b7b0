"""TLS upstreams: verification against tls.ca_file, host names, SNI, keep-alive."""
import socket
import threading
import time

from harness import (ASAN, MiB, Conn, Mock, Proxy, assert_error, certs, free_port, get_json,
                     hdr_all, make_config, pattern_bytes, read_pattern, request)


def _proxy_for(mock, upstream_host="localhost"):
    cfg = make_config(free_port(), [{"host": "tls.test",
                                     "upstream": "https://%s:%d" % (upstream_host, mock.port)}])
    return Proxy(cfg)


def test_tls_upstream_works_with_sni_and_host():
    with Mock(tls=True) as up, _proxy_for(up) as px:
        echo = get_json(px.port, "http://tls.test/echo?x=1")
        assert echo["tls"] is True
        assert echo["target"] == "/echo?x=1"
        assert echo["sni"] == "localhost", "SNI sent: %r" % echo["sni"]
        assert hdr_all(echo["headers"], "host") == ["localhost:%d" % up.port], echo["headers"]


def test_tls_upstream_keepalive_one_handshake():
    with Mock(tls=True) as up, _proxy_for(up) as px:
        with Conn(px.port) as c:
            for i in range(4):
                c.send("GET http://tls.test/echo?i=%d HTTP/1.1\r\nHost: tls.test\r\n\r\n" % i)
                r = c.read_response()
                assert r is not None and r.status == 200 and r.json()["query"] == "i=%d" % i, \
                    "request %d: %r" % (i, r)
        st = up.stats()
        assert st["requests"] == 4
        assert st["tls_handshakes"] == 1, "4 keep-alive requests made %d TLS handshakes" % \
            st["tls_handshakes"]


def test_tls_upstream_ip_address_san():
    with Mock(tls=True) as up, _proxy_for(up, "127.0.0.1") as px:
        echo = get_json(px.port, "http://tls.test/echo")
        assert echo["tls"] is True
        assert hdr_all(echo["headers"], "host") == ["127.0.0.1:%d" % up.port], echo["headers"]


def test_tls_upstream_untrusted_certificate_502():
    c = certs()
    with Mock(tls=(c["selfsigned_cert"], c["selfsigned_key"])) as up, _proxy_for(up) as px:
        st, hdrs, body = request(px.port, "GET", "http://tls.test/echo",
                                 headers={"Authorization": "Bearer must-not-leak"})
        assert_error((st, hdrs, body), 502, "upstream_unavailable")
        time.sleep(0.1)
        s = up.stats()
        assert s["requests"] == 0 and s["tls_handshakes"] == 0, \
            "an unverified upstream got a request: %r" % s


def test_tls_upstream_wrong_host_name_502():
    c = certs()
    with Mock(tls=(c["wronghost_cert"], c["wronghost_key"])) as up, _proxy_for(up) as px:
        st, hdrs, body = request(px.port, "GET", "http://tls.test/echo")
        assert_error((st, hdrs, body), 502, "upstream_unavailable")
        time.sleep(0.1)
        s = up.stats()
        assert s["requests"] == 0, "an upstream with the wrong name got a request: %r" % s


def test_tls_upstream_answering_plain_http_502():
    # an https:// upstream that answers in clear text: the handshake fails at once -> 502
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    ls.settimeout(0.2)
    port = ls.getsockname()[1]
    stop = threading.Event()
    got = []

    def serve():
        while not stop.is_set():
            try:
                s, _ = ls.accept()
            except OSError:
                continue
            try:
                s.settimeout(2)
                got.append(s.recv(65536))
                s.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            finally:
                s.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        cfg = make_config(free_port(), [{"host": "tls.test",
                                         "upstream": "https://localhost:%d" % port}])
        with Proxy(cfg) as px:
            t0 = time.monotonic()
            st, hdrs, body = request(px.port, "GET", "http://tls.test/echo")
            assert_error((st, hdrs, body), 502, "upstream_unavailable")
            assert time.monotonic() - t0 < 1.5, "a failed handshake took %.1f s" % (
                time.monotonic() - t0)
        assert got and got[0][:1] == b"\x16", "the proxy did not start with a TLS handshake"
        assert not any(b"GET " in g for g in got), "the request went out in clear text"
    finally:
        stop.set()
        th.join(3)
        ls.close()


def test_tls_upstream_download_and_upload():
    n = 4 * MiB if ASAN else 16 * MiB
    with Mock(tls=True) as up, _proxy_for(up) as px:
        with Conn(px.port, timeout=30) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            c.send("GET http://tls.test/bytes?n=%d HTTP/1.1\r\nHost: tls.test\r\n\r\n" % n)
            deadline = time.monotonic() + 60
            head = c.read_until(b"\r\n\r\n", deadline)
            assert head and head.startswith(b"HTTP/1.1 200"), "head %r" % head
            assert read_pattern(c, n, deadline) == n, "TLS download cut short"
        from harness import pattern_bytes, sha256
        body = pattern_bytes(2 * MiB + 3)
        echo = get_json(px.port, "http://tls.test/upload", method="POST", body=body)
        assert echo["body_length"] == len(body) and echo["body_sha256"] == sha256(body)


def _slow_chunked_read(port, n, rate, rcvbuf, deadline_s):
    """GET a chunked n-byte pattern body through tls.test with a small receive buffer, reading
    at about rate bytes/s. Returns (body read, complete, seconds)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(deadline_s)
    t0 = time.monotonic()
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET http://tls.test/chunked?n=%d HTTP/1.1\r\nHost: tls.test\r\n\r\n" % n)
    buf = bytearray()
    step = 16 * 1024
    try:
        while not buf.endswith(b"\r\n0\r\n\r\n") and time.monotonic() - t0 < deadline_s:
            due = t0 + len(buf) / float(rate)
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            d = s.recv(step)
            if not d:
                break
            buf += d
    except socket.timeout:
        pass
    finally:
        s.close()
    dt = time.monotonic() - t0
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    body, i = bytearray(), 0
    while True:  # de-chunk what came
        j = rest.find(b"\r\n", i)
        if j < 0:
            return body, False, dt
        size = int(rest[i:j].split(b";")[0], 16)
        if size == 0:
            return body, rest[j:j + 4] == b"\r\n\r\n", dt
        body += rest[j + 2:j + 2 + size]
        if len(rest) < j + 4 + size:
            return body, False, dt
        i = j + 4 + size


def test_tls_fast_chunked_response_to_a_slow_reader_arrives_whole():
    # Decrypted bytes left in OpenSSL once a pump had filled the input buffer waited for a
    # socket read that never came after the upstream's last bytes: the client sat 16-150
    # bytes short of the end until upstream_timeout_ms, then was cut.
    n = (8 if ASAN else 20) * MiB
    rate = 8 * MiB
    with Mock(tls=True) as up:
        cfg = make_config(free_port(), [{"host": "tls.test",
                                         "upstream": "https://localhost:%d" % up.port}],
                          limits={"upstream_timeout_ms": 10000})
        want = pattern_bytes(n)
        with Proxy(cfg) as px:
            for attempt in range(3):
                body, complete, dt = _slow_chunked_read(px.port, n, rate, 64 * 1024, 9)
                assert len(body) == n and complete, \
                    "attempt %d: %d of %d body bytes, complete %s, after %.1f s" % (
                        attempt, len(body), n, complete, dt)
                assert body == want, "attempt %d: the body differs from the upstream's" % attempt


def _tls_server_close_notify_then_junk(cert, key, ready, stop):
    """One TLS connection on memory BIOs: reads a request, answers a close-delimited 200,
    sends close_notify and bytes after it in one segment, then holds the TCP connection open
    (no FIN) until stop is set."""
    import ssl
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ready.append(ls.getsockname()[1])
    ls.settimeout(10)
    try:
        s, _ = ls.accept()
    except OSError:
        return
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=True)
    s.settimeout(5)

    def pump(fn):
        for _ in range(1000):
            try:
                return fn()
            except ssl.SSLWantReadError:
                if out.pending:
                    s.sendall(out.read())
                d = s.recv(65536)
                if not d:
                    raise OSError("closed")
                inc.write(d)
    try:
        pump(obj.do_handshake)
        if out.pending:
            s.sendall(out.read())
        req = b""
        while b"\r\n\r\n" not in req:
            req += pump(lambda: obj.read(65536))
        obj.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello")
        try:
            obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        s.sendall(out.read() + b"bytes after close_notify")
        while not stop:
            time.sleep(0.05)
    except OSError:
        pass
    finally:
        s.close()
        ls.close()


def test_tls_bytes_after_close_notify_end_the_response():
    # After a close_notify OpenSSL never reads its input again: bytes behind it once looked
    # like plaintext still to come, and the loop delivered them for ever (100 % CPU, no admin)
    c = certs()
    ready, stop = [], []
    t = threading.Thread(target=_tls_server_close_notify_then_junk,
                         args=(c["cert"], c["key"], ready, stop), daemon=True)
    t.start()
    for _ in range(100):
        if ready:
            break
        time.sleep(0.02)
    admin = free_port()
    cfg = make_config(free_port(), [{"host": "tls.test",
                                     "upstream": "https://localhost:%d" % ready[0]}],
                      admin_listen="127.0.0.1:%d" % admin)
    try:
        with Proxy(cfg) as px:
            t0 = time.monotonic()
            with Conn(px.port) as cl:
                cl.send("GET http://tls.test/ HTTP/1.1\r\nHost: tls.test\r\n\r\n")
                r = cl.read_response(timeout=4)
            assert r is not None and r.status == 200 and r.body == b"hello" and r.complete, r
            assert time.monotonic() - t0 < 3, "the response waited for the TCP close"
            st, _, body = request(admin, "GET", "/healthz", timeout=2)
            assert st == 200 and body == b"ok", "the loop no longer answers: %r" % body
    finally:
        stop.append(1)
        t.join(10)
