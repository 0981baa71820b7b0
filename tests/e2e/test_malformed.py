"""Requests a proxy must refuse: 400 bad_request, 414, 431. The upstream never sees them, and
the proxy closes the connection afterwards."""
import time

from harness import Conn, assert_error, get_json, proxied

GOOD = "GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n"


def refused(data, status=400, code="bad_request", limits=None):
    """Sends data on a fresh proxy (no pooled upstream connection), expects the JSON error, the
    connection closed and the upstream untouched; then checks a good request still works."""
    with proxied(limits=limits) as (up, px):
        with Conn(px.port) as c:
            c.send(data)
            r = c.read_response()
            assert_error(r, status, code)
            assert c.closed_within(3), "proxy kept the connection open after %d" % status
        time.sleep(0.1)
        st = up.stats()
        assert st["requests"] == 0, "the upstream saw the refused request: %r" % st["targets"]
        echo = get_json(px.port, "http://plain.test/echo")
        assert echo["path"] == "/echo", "a good request after the refused one failed"


def test_400_content_length_and_transfer_encoding():
    refused("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")


def test_400_transfer_encoding_and_content_length_reversed():
    refused("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n")


def test_400_duplicate_content_length():
    refused("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
            "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello")


def test_400_conflicting_content_length():
    refused("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
            "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")


def test_400_content_length_list():
    refused("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
            "Content-Length: 5, 6\r\n\r\nhello!")


def test_400_content_length_not_a_number():
    refused("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
            "Content-Length: 5x\r\n\r\nhello")


def test_400_bad_chunk_size():
    refused("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
            "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")


def test_400_transfer_encoding_on_http10():
    refused("POST http://plain.test/upload HTTP/1.0\r\nHost: plain.test\r\n"
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


def test_400_transfer_encoding_final_not_chunked():
    refused("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
            "Transfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


def test_400_transfer_encoding_identity_only():
    refused("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
            "Transfer-Encoding: gzip\r\n\r\nhello")


def test_400_two_host_headers():
    refused("GET /gw/echo HTTP/1.1\r\nHost: plain.test\r\nHost: other.test\r\n\r\n")


def test_400_two_host_headers_absolute_form():
    refused("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\nHost: plain.test\r\n\r\n")


def test_400_userinfo_in_target():
    refused("GET http://user:pw@plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\r\n")


def test_400_obs_fold():
    refused("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n"
            "X-Folded: first\r\n  continued\r\n\r\n")


def test_400_control_character_in_value():
    refused("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n"
            "X-Ctl: a\x01b\r\n\r\n")


def test_400_control_character_del_and_nul_in_value():
    refused("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n"
            "X-Ctl: a\x7fb\r\n\r\n")
    refused("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n"
            "X-Ctl: a\x00b\r\n\r\n")


def test_400_bare_cr_in_value():
    refused("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n"
            "X-Ctl: a\rInjected: b\r\n\r\n")


def test_400_control_character_in_name():
    refused("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n"
            "X\x01Name: v\r\n\r\n")


def test_400_space_before_colon():
    refused("GET http://plain.test/echo HTTP/1.1\r\nHost : plain.test\r\n\r\n")


def test_400_bare_lf():
    refused("GET http://plain.test/echo HTTP/1.1\nHost: plain.test\n\n")


def test_400_bare_lf_in_header_block():
    refused("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\nX-A: b\r\n\r\n")


def test_400_garbage_request_line():
    refused("THIS IS NOT HTTP\r\n\r\n")


def test_400_http11_without_host():
    refused("GET /gw/echo HTTP/1.1\r\nUser-Agent: e2e\r\n\r\n")


def test_414_request_line_too_long():
    refused("GET http://plain.test/echo?q=%s HTTP/1.1\r\nHost: plain.test\r\n\r\n" % ("a" * 9000),
            status=414, code="uri_too_long")


def test_414_counts_the_whole_request_line():
    # "longer than 8 KiB": method, target and version together, without the CRLF
    def line(n):
        base = "GET http://plain.test/echo?q="
        return base + "c" * (n - len(base) - len(" HTTP/1.1")) + " HTTP/1.1"
    assert len(line(8192)) == 8192
    refused(line(8193) + "\r\nHost: plain.test\r\n\r\n", status=414, code="uri_too_long")
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send(line(8192) + "\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
        assert r is not None and r.status == 200, "an 8192-byte request line: %r" % r


def test_long_request_line_under_limit_is_forwarded():
    with proxied() as (up, px):
        q = "q=" + "b" * 7900
        with Conn(px.port) as c:
            c.send("GET http://plain.test/echo?%s HTTP/1.1\r\nHost: plain.test\r\n\r\n" % q)
            r = c.read_response()
        assert r is not None and r.status == 200, "7.9 KiB request line: %r" % r
        assert r.json()["query"] == q, "query mangled"


def test_431_too_many_headers():
    hdrs = "".join("X-H%d: v\r\n" % i for i in range(30))
    refused("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n%s\r\n" % hdrs,
            status=431, code="headers_too_large", limits={"max_headers": 20})


def test_431_header_bytes():
    refused("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\nX-Big: %s\r\n\r\n"
            % ("x" * 5000), status=431, code="headers_too_large",
            limits={"max_header_bytes": 4096})


def test_431_limits_not_hit_below_them():
    with proxied(limits={"max_headers": 20, "max_header_bytes": 4096}) as (up, px):
        hdrs = "".join("X-H%d: v\r\n" % i for i in range(15))
        with Conn(px.port) as c:
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n%s"
                   "X-Big: %s\r\n\r\n" % (hdrs, "y" * 2500))
            r = c.read_response()
        assert r is not None and r.status == 200, "below the limits: %r" % r
        echo = r.json()
        assert len([1 for k, _ in echo["headers"] if k.lower().startswith("x-h")]) == 15


def test_400_chunked_applied_twice():
    refused("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
            "Transfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


def test_400_negative_content_length():
    refused("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
            "Content-Length: -1\r\n\r\n")


def test_400_nul_and_space_in_target():
    refused("GET http://plain.test/ec\x00ho HTTP/1.1\r\nHost: plain.test\r\n\r\n")
    refused("GET http://plain.test/a b HTTP/1.1\r\nHost: plain.test\r\n\r\n")


def test_400_bad_chunk_terminator():
    # llhttp in strict mode: chunk data must end with CRLF (else "3\r\nabcXX0..." slips through)
    refused("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
            "Transfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n")


def test_connection_cannot_hide_the_message_length():
    """Connection naming Content-Length / Transfer-Encoding must not strip the framing header
    while the body is passed on: the upstream would read the body as a second request."""
    smuggled = "GET /SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n"
    chunked = "%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    for framing, body in (("Content-Length: %d" % len(smuggled), smuggled),
                          ("Transfer-Encoding: chunked", chunked)):
        name = framing.split(":")[0]
        with proxied() as (up, px):
            with Conn(px.port) as c:
                c.send("POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\n"
                       "Connection: %s\r\n%s\r\n\r\n%s" % (name, framing, body))
                r = c.read_response()
                assert r is not None and r.status == 200, "%s: %r" % (name, r)
                assert r.json()["body_length"] == len(smuggled), "%s: %r" % (name, r.json())
            time.sleep(0.2)
            targets = up.stats()["targets"]
            assert not any("SMUGGLED" in t for t in targets), "%s smuggled: %r" % (name, targets)


def test_many_hop_by_hop_headers_between_kept_ones():
    """More separate runs of kept header lines than the head has iovecs for: copied, not 502."""
    lines = "".join("X-Keep-%d: v%d\r\nKeep-Alive: 1\r\n" % (i, i) for i in range(45))
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n%s\r\n" % lines)
            r = c.read_response()
            assert r is not None and r.status == 200, "%r" % r
            got = [k for k, v in r.json()["headers"] if k.startswith("X-Keep-")]
            assert len(got) == 45, "upstream got %d of 45 kept headers" % len(got)
            assert not any(k.lower() == "keep-alive" for k, v in r.json()["headers"])


def test_response_framing_survives_connection_header_and_bad_status():
    with proxied() as (up, px):
        with Conn(px.port) as c:
            c.send("GET http://plain.test/conn_cl HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert r is not None and r.status == 200 and r.body == b"hello", "%r" % r
            assert r.header("content-length") == "5", "framing header dropped: %r" % r.headers
        with Conn(px.port) as c:
            # a 100 claiming a body reaches the client as a bare interim response
            c.send("GET http://plain.test/interim_body HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response(keep_interim=True)
            assert r is not None and r.status == 100, "%r" % r
            assert not any(k.lower() == "content-length" for k, v in r.headers), r.headers
            r = c.read_response()
            assert r is not None and r.status == 200 and r.body == b"real", "%r" % r
        with Conn(px.port) as c:
            c.send("GET http://plain.test/status000 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
            r = c.read_response()
            assert_error(r, 502, "upstream_unavailable")
