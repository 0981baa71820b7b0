/* test_http.c - header handling: heads parsed in place through llhttp with the server's span
 * callbacks, hop-by-hop classification, Connection-listed names, the smuggling facts the proxy
 * checks, Via loop detection and absolute-form target splitting. */
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "unit.h"

struct parsed {
    struct head hd;
    struct hdr hdrs[16];
    llhttp_t p;
    int rc;
};

static int stop_at_headers(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED;
}

static llhttp_settings_t settings = {
    .on_url = head_on_url,
    .on_header_field = head_on_header_field,
    .on_header_value = head_on_header_value,
    .on_headers_complete = stop_at_headers,
};

/* Parses text (split into two reads at `split` to exercise span continuation). */
static void parse(struct parsed *x, const char *text, size_t split, int cap)
{
    memset(x, 0, sizeof *x);
    x->hd.h = x->hdrs;
    x->hd.cap = x->hd.max = cap;
    head_reset(&x->hd, 0);
    x->hd.base = text;
    llhttp_init(&x->p, HTTP_REQUEST, &settings);
    x->p.data = &x->hd;
    size_t n = strlen(text);
    if (split == 0 || split > n) split = n;
    enum llhttp_errno e = llhttp_execute(&x->p, text, split);
    if (e == HPE_OK && split < n) e = llhttp_execute(&x->p, text + split, n - split);
    x->rc = e;
    if (e == HPE_PAUSED) {
        x->hd.end = (uint32_t)(llhttp_get_error_pos(&x->p) - text);
        x->rc = head_analyze(&x->hd) == HEAD_OK ? 0 : -1;
    }
}

static const struct hdr *find(const struct parsed *x, const char *name)
{
    for (int i = 0; i < x->hd.n; i++) {
        const struct hdr *h = &x->hd.h[i];
        if (h->name_len == strlen(name) && ascii_ieq(x->hd.base + h->name_off, name, h->name_len))
            return h;
    }
    return NULL;
}

TEST(head_slices_point_into_the_buffer)
{
    static const char req[] = "GET http://a.example/x?y=1 HTTP/1.1\r\nHost: a.example\r\n"
                              "X-Long: some value here\r\n\r\n";
    for (size_t split = 0; split < sizeof req - 1; split += 7) {
        struct parsed x;
        parse(&x, req, split, 16);
        REQUIRE(x.rc == 0);
        CHECK_EQ_INT(x.hd.line_len, strlen("http://a.example/x?y=1"));
        CHECK(memcmp(req + x.hd.line_off, "http://a.example/x?y=1", x.hd.line_len) == 0);
        const struct hdr *h = find(&x, "x-long");
        REQUIRE(h != NULL);
        CHECK_EQ_INT(h->val_len, strlen("some value here"));
        CHECK(memcmp(req + h->val_off, "some value here", h->val_len) == 0);
        /* raw line reaches the next header or the blank line */
        CHECK(memcmp(req + h->name_off, "X-Long: some value here\r\n", h->line_end - h->name_off) ==
              0);
        CHECK_EQ_INT(x.hd.host_idx, 0);
    }
}

TEST(hop_by_hop_headers_and_connection_tokens)
{
    struct parsed x;
    parse(&x,
          "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret-Hop\r\n"
          "Keep-Alive: 5\r\nProxy-Authorization: Basic x\r\nProxy-Connection: close\r\n"
          "TE: trailers\r\nTrailer: X\r\nUpgrade: h2c\r\nX-Secret-Hop: 1\r\nX-End: 2\r\n"
          "Authorization: Bearer a\r\nVia: 1.0 a\r\n\r\n",
          0, 16);
    REQUIRE(x.rc == 0);
    const char *hop[] = {
        "host", "connection", "keep-alive", "proxy-authorization", "proxy-connection",
        "te",   "trailer",    "upgrade",    "x-secret-hop"};
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++) {
        const struct hdr *h = find(&x, hop[i]);
        REQUIRE(h != NULL);
        if (!h->hop) fprintf(stderr, "not hop-by-hop: %s\n", hop[i]);
        CHECK(h->hop);
    }
    const char *kept[] = {"x-end", "authorization", "via"};
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
        const struct hdr *h = find(&x, kept[i]);
        REQUIRE(h != NULL);
        CHECK(!h->hop);
    }
    CHECK(x.hd.conn_keep_alive);
    CHECK(x.hd.conn_close); /* Proxy-Connection: close counts */
    CHECK_EQ_INT(x.hd.auth_idx, 10);
}

TEST(message_length_facts)
{
    struct parsed x;
    parse(&x, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 0, 16);
    REQUIRE(x.rc == 0);
    CHECK_EQ_INT(x.hd.n_te, 1);
    CHECK(x.hd.te_chunked_last);
    parse(&x, "POST / HTTP/1.1\r\nHost: h\r\nHost: i\r\nExpect: 100-continue\r\n\r\n", 0, 16);
    REQUIRE(x.rc == 0);
    CHECK_EQ_INT(x.hd.n_host, 2);
    CHECK(x.hd.expect_continue);
}

TEST(forbidden_bytes_are_refused)
{
    struct parsed x;
    /* obs-fold (SP or HTAB) and an empty name: llhttp passes them on; the proxy must refuse */
    parse(&x, "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", 0, 16);
    CHECK(x.rc != 0);
    parse(&x, "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n", 0, 16);
    CHECK(x.rc != 0);
    parse(&x, "GET / HTTP/1.1\r\nHost: h\r\n: a\r\n\r\n", 0, 16);
    CHECK(x.rc != 0);
    /* whitespace between name and colon */
    parse(&x, "GET / HTTP/1.1\r\nHost: h\r\nX : a\r\n\r\n", 0, 16);
    CHECK(x.rc != 0);
    /* a control character in a value is refused by llhttp or by us */
    parse(&x, "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n", 0, 16);
    CHECK(x.rc != 0);
    parse(&x, "GET / HTTP/1.1\r\nHost: h\r\nX: tab\tok\r\n\r\n", 0, 16);
    CHECK_EQ_INT(x.rc, 0);
}

/* head_analyze leaves byte checks to llhttp's strict machine: it must refuse, in requests and
 * responses, every byte that a field name (a token) or a field value (VCHAR, obs-text, SP,
 * HTAB) may not hold, and accept every other one. All 256 bytes, both positions. */
static bool token_byte(int b)
{
    return (b >= '0' && b <= '9') || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') ||
           (b != 0 && strchr("!#$%&'*+-.^_`|~", b) != NULL);
}

static bool strict_accepts(llhttp_type_t type, const char *text, size_t n)
{
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    llhttp_t p;
    llhttp_init(&p, type, &s);
    return llhttp_execute(&p, text, n) == HPE_OK;
}

TEST(llhttp_refuses_every_bad_field_byte)
{
    for (int type = 0; type < 2; type++) {
        const char *first = type ? "HTTP/1.1 200 OK\r\n" : "GET / HTTP/1.1\r\nHost: h\r\n";
        size_t fl = strlen(first);
        for (int b = 0; b < 256; b++) {
            char t[128];
            /* name "X?Y" (':' would end the name: "X" with value "Y: a") */
            int n = snprintf(t, sizeof t, "%sX?Y: a\r\nContent-Length: 0\r\n\r\n", first);
            t[fl + 1] = (char)b;
            bool want = token_byte(b) || b == ':';
            CHECK(strict_accepts(type ? HTTP_RESPONSE : HTTP_REQUEST, t, (size_t)n) == want);
            /* value "a?b" */
            n = snprintf(t, sizeof t, "%sX: a?b\r\nContent-Length: 0\r\n\r\n", first);
            t[fl + 4] = (char)b;
            want = (b >= 0x20 || b == '\t') && b != 0x7f;
            CHECK(strict_accepts(type ? HTTP_RESPONSE : HTTP_REQUEST, t, (size_t)n) == want);
        }
    }
}

/* Names are recognised whatever their case, and only when exactly equal. */
TEST(known_names_any_case_exact_length)
{
    struct parsed x;
    parse(&x,
          "GET / HTTP/1.1\r\nHOST: h\r\nconnection: close\r\nKeep-Alivf: 1\r\nTE: x\r\n"
          "Trailer: y\r\nUpgradE: z\r\nContent-Lengthx: 1\r\nTransfer-EncodinG: chunked\r\n"
          "vIA: 1.1 a\r\n\r\n",
          0, 16);
    REQUIRE(x.rc == 0);
    CHECK_EQ_INT(find(&x, "host")->kind, H_HOST);
    CHECK_EQ_INT(find(&x, "connection")->kind, H_CONNECTION);
    CHECK_EQ_INT(find(&x, "keep-alivf")->kind, H_OTHER);
    CHECK(!find(&x, "keep-alivf")->hop);
    CHECK_EQ_INT(find(&x, "te")->kind, H_TE);
    CHECK_EQ_INT(find(&x, "trailer")->kind, H_TRAILER);
    CHECK_EQ_INT(find(&x, "upgrade")->kind, H_UPGRADE);
    CHECK_EQ_INT(find(&x, "content-lengthx")->kind, H_OTHER);
    CHECK_EQ_INT(find(&x, "transfer-encoding")->kind, H_TRANSFER_ENCODING);
    CHECK(!find(&x, "transfer-encoding")->hop);
    CHECK_EQ_INT(find(&x, "via")->kind, H_VIA);
    CHECK(!find(&x, "via")->hop);
    CHECK(x.hd.conn_close);
}

TEST(too_many_headers)
{
    struct parsed x;
    parse(&x, "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", 0, 2);
    CHECK(x.rc != 0 && x.rc != HPE_PAUSED);
    CHECK_EQ_INT(x.hd.error, HEAD_TOO_MANY);
    parse(&x, "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n", 0, 2);
    CHECK_EQ_INT(x.rc, 0);
}

/* The header array starts small and doubles up to max; max stays the limit. */
TEST(header_array_grows_up_to_max)
{
    static const char *text = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n";
    for (int max = 4; max <= 5; max++) {
        struct head hd;
        memset(&hd, 0, sizeof hd);
        hd.cap = 2;
        hd.max = max;
        hd.h = malloc(sizeof(struct hdr) * 2);
        REQUIRE(hd.h != NULL);
        head_reset(&hd, 0);
        hd.base = text;
        llhttp_t p;
        llhttp_init(&p, HTTP_REQUEST, &settings);
        p.data = &hd;
        enum llhttp_errno e = llhttp_execute(&p, text, strlen(text));
        if (max == 5) {
            CHECK_EQ_INT(e, HPE_PAUSED);
            CHECK_EQ_INT(hd.n, 5);
            CHECK_EQ_INT(hd.cap, 5); /* 2, 4, then capped at max */
            CHECK(memcmp(text + hd.h[4].name_off, "E", 1) == 0);
            CHECK(memcmp(text + hd.h[0].val_off, "1", 1) == 0);
        } else {
            CHECK(e != HPE_OK && e != HPE_PAUSED);
            CHECK_EQ_INT(hd.error, HEAD_TOO_MANY);
        }
        free(hd.h);
    }
}

TEST(request_line_limit)
{
    static char req[REQUEST_LINE_MAX + 64];
    strcpy(req, "GET /");
    memset(req + 5, 'a', REQUEST_LINE_MAX);
    strcpy(req + 5 + REQUEST_LINE_MAX, " HTTP/1.1\r\n\r\n");
    struct parsed x;
    parse(&x, req, 1000, 16);
    CHECK_EQ_INT(x.hd.error, HEAD_URI_TOO_LONG);
}

TEST(via_loop_detection)
{
    const char *v = "1.1 gw1, 1.0 authproxy-a (comment, with comma), HTTP/1.1 other";
    CHECK(via_contains(v, strlen(v), "gw1"));
    CHECK(via_contains(v, strlen(v), "authproxy-a"));
    CHECK(via_contains(v, strlen(v), "other"));
    CHECK(!via_contains(v, strlen(v), "authproxy"));
    CHECK(!via_contains(v, strlen(v), "comma"));
    CHECK(!via_contains("", 0, "gw1"));
}

TEST(absolute_form_targets)
{
    const char *a, *p;
    size_t al, pl;
    bool ui;
    const char *t = "http://api.example.com:8080/v1/x?q=1";
    REQUIRE(target_split(t, strlen(t), &a, &al, &p, &pl, &ui) == 0);
    CHECK(al == strlen("api.example.com:8080") && memcmp(a, "api.example.com:8080", al) == 0);
    CHECK(pl == strlen("/v1/x?q=1") && memcmp(p, "/v1/x?q=1", pl) == 0);
    t = "HTTP://h";
    REQUIRE(target_split(t, strlen(t), &a, &al, &p, &pl, &ui) == 0);
    CHECK_EQ_INT(pl, 0);
    t = "http://user:pw@h/";
    CHECK(target_split(t, strlen(t), &a, &al, &p, &pl, &ui) < 0);
    CHECK(ui);
    t = "ftp://h/";
    CHECK(target_split(t, strlen(t), &a, &al, &p, &pl, &ui) < 0);
    t = "http:///x";
    CHECK(target_split(t, strlen(t), &a, &al, &p, &pl, &ui) < 0);
}
