"""Forward-proxy and gateway requests: routing, Host, Via, hop-by-hop headers, bodies, framing."""
import json
import socket

from harness import (T, VIA, Conn, Mock, Proxy, assert_error, curl, free_port, get_json, hdr,
                     hdr_all, make_config, pattern_bytes, plain_route, proxied, request, sha256)

HOP_NAMES = {"keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer", "upgrade"}


def _connection_ok(values):
    """authproxy may manage its own connection with Connection: keep-alive/close, nothing else."""
    toks = [t.strip().lower() for v in values for t in v.split(",") if t.strip()]
    return all(t in ("keep-alive", "close") for t in toks), toks


def test_curl_forward_proxy():
    with proxied() as (up, px):
        r = curl(["-x", "http://127.0.0.1:%d" % px.port, "-D", "-",
                  "http://plain.test/echo?a=1&b=x%20y"])
        assert r.returncode == 0, "curl failed: %s" % r.stderr.decode()
        text = r.stdout.decode("utf-8", "replace")
        head, _, body = text.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 200"), "curl status: %r" % head[:200]
        echo = json.loads(body)
        assert echo["method"] == "GET"
        assert echo["target"] == "/echo?a=1&b=x%20y", "upstream target %r" % echo["target"]
        assert hdr_all(echo["headers"], "host") == ["127.0.0.1:%d" % up.port], echo["headers"]
        assert hdr(echo["headers"], "proxy-connection") is None, \
            "curl's Proxy-Connection reached the upstream"


def test_curl_gateway_strips_prefix():
    with proxied() as (up, px):
        r = curl(["http://127.0.0.1:%d/gw/echo?x=%%41&y" % px.port])
        assert r.returncode == 0, "curl failed: %s" % r.stderr.decode()
        echo = json.loads(r.stdout)
        assert echo["target"] == "/echo?x=%41&y", "upstream target %r" % echo["target"]
        assert hdr_all(echo["headers"], "host") == ["127.0.0.1:%d" % up.port], echo["headers"]


def test_gateway_without_strip_keeps_prefix():
    def routes(up):
        return [{"path_prefix": "/keep/", "upstream": "http://127.0.0.1:%d" % up.port}]
    with proxied(routes=routes) as (up, px):
        echo = get_json(px.port, "/keep/echo?q=1", headers={"Host": "whatever.test"})
        assert echo["target"] == "/keep/echo?q=1", "upstream target %r" % echo["target"]


def test_raw_absolute_form_and_query_preserved():
    with proxied() as (up, px):
        q = "/echo?a=1&b=two%20words&c=%2F&empty=&flag&u=%E2%82%AC"
        with Conn(px.port) as c:
            c.send("GET http://plain.test%s HTTP/1.1\r\nHost: plain.test\r\n"
                   "User-Agent: e2e\r\nX-Custom: v1\r\nX-Custom: v2\r\n\r\n" % q)
            r = c.read_response()
        assert r is not None and r.status == 200, "response %r" % r
        echo = r.json()
        assert echo["target"] == q, "upstream target %r" % echo["target"]
        assert echo["version"] == "HTTP/1.1", "upstream request version %r" % echo["version"]
        assert hdr_all(echo["headers"], "x-custom") == ["v1", "v2"] or \
            hdr_all(echo["headers"], "x-custom") == ["v1, v2"], echo["headers"]
        assert hdr(echo["headers"], "user-agent") == "e2e"


def test_upstream_host_and_via():
    with proxied() as (up, px):
        echo = get_json(px.port, "http://plain.test/echo")
        hosts = hdr_all(echo["headers"], "host")
        assert hosts == ["127.0.0.1:%d" % up.port], "upstream Host %r" % hosts
        via = [t.strip() for v in hdr_all(echo["headers"], "via") for t in v.split(",")]
        assert via == ["1.1 " + VIA], "upstream Via %r" % via


def test_via_appended_to_received_via():
    with proxied() as (up, px):
        echo = get_json(px.port, "http://plain.test/echo",
                        headers={"Via": "1.0 fred, 1.1 p.example.net"})
        via = [t.strip() for v in hdr_all(echo["headers"], "via") for t in v.split(",")]
        assert via == ["1.0 fred", "1.1 p.example.net", "1.1 " + VIA], "upstream Via %r" % via
        # a name that merely starts with ours is somebody else: no loop
        echo = get_json(px.port, "http://plain.test/echo", headers={"Via": "1.1 %s-other" % VIA})
        via = [t.strip() for v in hdr_all(echo["headers"], "via") for t in v.split(",")]
        assert via == ["1.1 %s-other" % VIA, "1.1 " + VIA], "upstream Via %r" % via


def test_via_on_the_response_and_the_default_name():
    with proxied() as (up, px):
        st, hdrs, body = request(px.port, "GET", "http://plain.test/echo")
        via = [t.strip() for v in hdr_all(hdrs, "via") for t in v.split(",")]
        assert st == 200 and via and via[-1] == "1.1 " + VIA, "response Via %r" % via
    # no "via" in the configuration: authproxy-<hostname>-<port of the first listen address>
    with Mock() as up:
        port = free_port()
        cfg = make_config(port, [plain_route(up)])
        del cfg["via"]
        px = Proxy(cfg)
        try:
            echo = get_json(port, "http://plain.test/echo")
        finally:
            px.stop()
    name = "".join(c if c.isalnum() or c in "-._~:[]!#$%&'*+^`|" else "-"
                   for c in socket.gethostname())
    via = [t.strip() for v in hdr_all(echo["headers"], "via") for t in v.split(",")]
    assert via == ["1.1 authproxy-%s-%d" % (name, port)], "default Via %r" % via


def test_absolute_target_wins_over_host_header():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: other.test\r\n\r\n")
            r = c.read_response()
        assert r is not None and r.status == 200, "response %r" % r
        assert hdr_all(r.json()["headers"], "host") == ["127.0.0.1:%d" % up.port]


def test_host_matching_is_normalised():
    with proxied() as (up, px):
        for target, host in (("http://PLAIN.Test/echo", "PLAIN.TEST"),
                             ("http://plain.test./echo", "plain.test."),
                             ("http://plain.test:80/echo", "plain.test:80")):
            with Conn(px.port) as c:
                c.send("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host))
                r = c.read_response()
            assert r is not None and r.status == 200, "%s -> %r" % (target, r)
        # origin-form: the Host header picks the route
        with Conn(px.port) as c:
            c.send("GET /echo HTTP/1.1\r\nHost: Plain.Test\r\n\r\n")
            r = c.read_response()
        assert r is not None and r.status == 200, "origin-form with Host -> %r" % r
        assert r.json()["target"] == "/echo"


def test_hop_by_hop_request_headers_removed():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n"
                   "Connection: X-Hop-A, keep-alive\r\n"
                   "Connection: X-Hop-B\r\n"
                   "X-Hop-A: 1\r\nX-Hop-B: 2\r\n"
                   "Keep-Alive: timeout=5\r\n"
                   "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"
                   "Proxy-Connection: keep-alive\r\n"
                   "TE: trailers\r\n"
                   "Trailer: X-Trailer-Field\r\n"
                   "Upgrade: foo/1\r\n"
                   "X-E2E: kept\r\n\r\n")
            r = c.read_response()
        assert r is not None and r.status == 200, "response %r" % r
        headers = r.json()["headers"]
        names = {k.lower() for k, _ in headers}
        leaked = names & (HOP_NAMES | {"x-hop-a", "x-hop-b"})
        assert not leaked, "hop-by-hop headers reached the upstream: %r" % sorted(leaked)
        ok, toks = _connection_ok(hdr_all(headers, "connection"))
        assert ok, "upstream Connection header carries client tokens: %r" % toks
        assert set(r.json()["hop_by_hop"]) <= {"connection"}, r.json()["hop_by_hop"]
        assert hdr(headers, "x-e2e") == "kept", "end-to-end header lost"


def test_hop_by_hop_response_headers_removed():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/hop HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
        assert r is not None and r.status == 200 and r.body == b"hop", "response %r" % r
        names = set(r.header_names())
        leaked = names & (HOP_NAMES | {"x-resp-hop"})
        assert not leaked, "hop-by-hop headers reached the client: %r" % sorted(leaked)
        ok, toks = _connection_ok(r.header_all("connection"))
        assert ok, "client sees the upstream's Connection tokens: %r" % toks
        assert r.header("x-resp-e2e") == "yes", "end-to-end response header lost"


def test_post_content_length_body():
    with proxied() as (up, px):
        body = pattern_bytes(300000)
        echo = get_json(px.port, "http://plain.test/upload", method="POST", body=body,
                        headers={"Content-Type": "application/octet-stream"})
        assert echo["method"] == "POST"
        assert echo["body_length"] == len(body), "upstream got %d bytes" % echo["body_length"]
        assert echo["body_sha256"] == sha256(body), "upstream body differs"
        # and an empty body with Content-Length: 0
        echo = get_json(px.port, "http://plain.test/echo", method="POST", body=b"")
        assert echo["body_length"] == 0


def test_chunked_request_body():
    with proxied() as (up, px):
        data = pattern_bytes(400000)
        sizes = [1, 10, 65536, 100000, 0]
        pieces, off = [], 0
        for s in sizes[:-1]:
            pieces.append(data[off:off + s])
            off += s
        pieces.append(data[off:])
        st, _, body = request(px.port, "POST", "http://plain.test/upload", body=iter(pieces),
                              encode_chunked=True,
                              headers={"Transfer-Encoding": "chunked"})
        assert st == 200, "chunked upload -> %d %r" % (st, body[:300])
        echo = json.loads(body)
        assert echo["body_length"] == len(data), "upstream got %d bytes" % echo["body_length"]
        assert echo["body_sha256"] == sha256(data), "upstream body differs"


def test_chunked_request_with_extensions_and_trailers():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n"
                   "5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200, "response %r" % r
            echo = r.json()
            assert echo["body_length"] == 11 and echo["body_sha256"] == sha256(b"hello world"), echo
            # the connection is still usable afterwards
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200, "request after chunked body: %r" % r


def test_chunked_response():
    with proxied() as (up, px):
        n = 300000
        with Conn(px.port) as c:
            c.send("GET http://plain.test/chunked?n=%d&chunk=1000 HTTP/1.1\r\n"
                   "Host: plain.test\r\n\r\n" % n)
            r = c.read_response(timeout=T * 2)
            assert r is not None and r.status == 200 and r.complete, "response %r" % r
            assert r.framing in ("chunked", "length"), "framing %s" % r.framing
            assert r.body == pattern_bytes(n), "chunked body differs (%d bytes)" % len(r.body)
            # empty chunked body, then the connection is reused
            c.send("GET http://plain.test/chunked?n=0 HTTP/1.1\r\nHost: plain.test\r\n\r\n"
                   "GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.complete and r.body == b"", \
                "empty chunked: %r" % r
            r = c.read_response()
            assert r is not None and r.status == 200 and r.json()["path"] == "/echo", "%r" % r


def test_head_response_has_no_body():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("HEAD http://plain.test/bytes?n=12345 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response(method="HEAD")
            assert r is not None and r.status == 200, "HEAD %r" % r
            assert r.header("content-length") == "12345", "HEAD Content-Length %r" % r.headers
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200, "after HEAD: %r" % r
            assert r.json()["method"] == "GET", "the response after HEAD is not the echo"
        st = up.stats()
        assert st["targets"][0] == "HEAD /bytes?n=12345", "upstream saw %r" % st["targets"]


def test_204_and_304_have_no_body():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/status?code=204 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 204, "204: %r" % r
            assert r.header("transfer-encoding") is None, "204 with Transfer-Encoding"
            c.send("GET http://plain.test/status?code=304&cl=50 HTTP/1.1\r\nHost: plain.test\r\n"
                   "If-None-Match: \"v1\"\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 304, "304: %r" % r
            assert r.header("etag") == '"v1"', "304 lost its ETag: %r" % r.headers
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.json()["path"] == "/echo", \
                "request after 204/304: %r" % r


def test_other_statuses_pass_through():
    with proxied() as (up, px):
        for code in (201, 301, 401, 404, 500, 503):
            st, hdrs, body = request(px.port, "GET", "http://plain.test/status?code=%d" % code)
            assert st == code, "upstream %d became %d" % (code, st)
            assert body == b'{"status": %d}' % code, "body of %d: %r" % (code, body)
            assert hdr(hdrs, "x-mock-status") == str(code)


def test_read_until_close_response():
    with proxied() as (up, px):
        n = 200000
        with Conn(px.port) as c:
            c.send("GET http://plain.test/close?n=%d HTTP/1.1\r\nHost: plain.test\r\n\r\n" % n)
            r = c.read_response(timeout=T * 2)
            assert r is not None and r.status == 200, "response %r" % r
            assert r.body == pattern_bytes(n), "body differs: %d bytes" % len(r.body)
            if r.framing == "close":
                assert c.eof, "read-until-close body without a close"
            else:
                assert r.complete, "re-framed body incomplete"
        # HTTP/1.0 client: body, then the connection closes
        with Conn(px.port) as c:
            c.send("GET http://plain.test/close?n=%d HTTP/1.0\r\nHost: plain.test\r\n\r\n" % n)
            r = c.read_response(timeout=T * 2)
            assert r is not None and r.status == 200, "response %r" % r
            assert r.framing != "chunked", "chunked response to an HTTP/1.0 client"
            assert r.body == pattern_bytes(n), "body differs: %d bytes" % len(r.body)
            assert c.closed_within(3), "HTTP/1.0 connection not closed"


def test_http10_closes_and_keepalive_variant():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/echo HTTP/1.0\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200, "HTTP/1.0: %r" % r
            assert r.framing != "chunked", "chunked response to an HTTP/1.0 client"
            assert r.json()["path"] == "/echo"
            assert c.closed_within(3), "HTTP/1.0 connection left open"
        with Conn(px.port) as c:
            c.send("GET http://plain.test/echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.framing == "length", \
                "HTTP/1.0 keep-alive: %r" % r
            c.send("GET http://plain.test/bytes?n=100 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.body == pattern_bytes(100), \
                "second HTTP/1.0 keep-alive request: %r" % r


def test_http10_client_gets_dechunked_body():
    with proxied() as (up, px):
        n = 50000
        with Conn(px.port) as c:
            c.send("GET http://plain.test/chunked?n=%d&chunk=777 HTTP/1.0\r\n"
                   "Host: plain.test\r\n\r\n" % n)
            r = c.read_response(timeout=T * 2)
            assert r is not None and r.status == 200, "response %r" % r
            assert r.version in ("HTTP/1.0", "HTTP/1.1")
            assert r.header("transfer-encoding") is None, \
                "Transfer-Encoding sent to an HTTP/1.0 client: %r" % r.headers
            assert r.body == pattern_bytes(n), "body differs (%d bytes): %r" % (
                len(r.body), r.body[:40])
            assert c.closed_within(3), "connection not closed after the HTTP/1.0 response"


def test_no_route_is_403_and_upstream_untouched():
    with proxied() as (up, px):
        st, hdrs, body = request(px.port, "GET", "http://unknown.test/echo")
        assert_error((st, hdrs, body), 403, "no_route")
        with Conn(px.port) as c:
            c.send("GET /not-gw/echo HTTP/1.1\r\nHost: unknown.test\r\n\r\n")
            assert_error(c.read_response(), 403, "no_route")
        # an open proxy would forward to 127.0.0.1:<mock port> directly
        st, hdrs, body = request(px.port, "GET", "http://127.0.0.1:%d/echo" % up.port)
        assert_error((st, hdrs, body), 403, "no_route")
        assert up.stats()["requests"] == 0, "upstream saw a request without a route"


def test_http10_request_without_host_does_not_inherit_a_previous_host():
    """Exchange objects are pooled: a request that names no host must not be routed by the
    host a previous request left behind."""
    with proxied() as (up, px):
        assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"
        n = up.stats()["requests"]
        with Conn(px.port) as c:
            c.send("GET /echo HTTP/1.0\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status in (400, 403), "got %r" % r
        assert up.stats()["requests"] == n, "a request without a host reached an upstream"


def test_upstream_response_with_cl_and_te_is_not_passed_ambiguously():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/clte HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
        assert r is not None, "no response"
        if r.status == 502:
            assert_error(r, 502, "upstream_unavailable")
            return
        assert r.status == 200, "%r" % r
        assert not (r.header("content-length") and r.header("transfer-encoding")), \
            "both Content-Length and Transfer-Encoding reached the client: %r" % r.headers
        assert r.complete and r.body == b"hello world", "body %r" % r.body


def test_upstream_response_conflicting_content_length_502():
    with proxied() as (up, px):
        st, hdrs, body = request(px.port, "GET", "http://plain.test/badcl")
        assert_error((st, hdrs, body), 502, "upstream_unavailable")


def test_connection_close_from_client():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n"
                   "Connection: close\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200, "%r" % r
            assert c.closed_within(3), "Connection: close from the client left the conn open"


def test_transfer_encoding_case_insensitive():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
                   "Transfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.json()["body_length"] == 5, "%r" % r


def test_listen_on_ipv4_and_ipv6_loopback():
    import socket as _s
    try:
        probe = _s.socket(_s.AF_INET6, _s.SOCK_STREAM)
        probe.bind(("::1", 0))
        port6 = probe.getsockname()[1]
        probe.close()
    except OSError:
        return  # no IPv6 loopback on this machine: nothing to test
    with proxied(listen_extra="[::1]:%d" % port6) as (up, px):
        assert get_json(px.port, "http://plain.test/echo")["path"] == "/echo"
        s = _s.create_connection(("::1", port6), timeout=T)
        try:
            s.sendall(b"GET http://plain.test/echo?v6 HTTP/1.1\r\nHost: plain.test\r\n"
                      b"Connection: close\r\n\r\n")
            data = b""
            for _ in range(1000):
                ch = s.recv(65536)
                if not ch:
                    break
                data += ch
        finally:
            s.close()
        assert data.startswith(b"HTTP/1.1 200"), "over ::1: %r" % data[:200]
        assert b'"query": "v6"' in data


def test_chunked_response_with_extensions_and_trailers():
    with proxied() as (up, px):
        n = 70000
        with Conn(px.port) as c:
            c.send("GET http://plain.test/chunked?n=%d&chunk=5000&ext=1&trailer=1 HTTP/1.1\r\n"
                   "Host: plain.test\r\n\r\n" % n)
            r = c.read_response()
            assert r is not None and r.status == 200 and r.complete, "%r" % r
            assert r.body == pattern_bytes(n), "body differs (%d bytes)" % len(r.body)
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.json()["path"] == "/echo", \
                "request after a response with trailers: %r" % r


def test_gateway_prefix_edges_and_upstream_base_path():
    def routes(up):
        base = "http://127.0.0.1:%d" % up.port
        return [{"path_prefix": "/gw/", "strip_prefix": True, "upstream": base},
                {"path_prefix": "/based/", "strip_prefix": True, "upstream": base + "/api"},
                {"host": "based.test", "upstream": base + "/v1"}]
    with proxied(routes=routes) as (up, px):
        echo = get_json(px.port, "/gw/?x=1", headers={"Host": "gw.test"})
        assert echo["target"] == "/?x=1", "/gw/?x=1 -> upstream %r" % echo["target"]
        echo = get_json(px.port, "/based/echo?q=2", headers={"Host": "gw.test"})
        assert echo["target"] == "/api/echo?q=2", "/based/echo -> upstream %r" % echo["target"]
        echo = get_json(px.port, "http://based.test/echo?q=3")
        assert echo["target"] == "/v1/echo?q=3", "based.test/echo -> upstream %r" % echo["target"]
