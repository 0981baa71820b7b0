/* http.c - message heads parsed in place, header classification and the smuggling checks.
 *
 * Owns no memory: a struct head points into its owner's header array and input buffer. */
#include "http.h"

#include <stdlib.h>
#include <string.h>

static inline struct head *head_of(llhttp_t *p)
{
    return (struct head *)p->data;
}

static inline char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}

bool ascii_ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower(a[i]) != lower(b[i])) return false;
    return true;
}

void head_reset(struct head *hd, uint32_t start)
{
    hd->n = 0;
    hd->in_value = false;
    hd->frozen = false;
    hd->error = HEAD_OK;
    hd->start = start;
    hd->line_off = hd->line_len = 0;
    hd->end = 0;
    hd->n_host = hd->n_cl = hd->n_te = 0;
    hd->host_idx = hd->auth_idx = -1;
    hd->conn_close = hd->conn_keep_alive = hd->expect_continue = false;
    hd->te_chunked_last = false;
}

/* Span callbacks may be called several times for one element when it arrives split over reads;
 * the input buffer is contiguous, so the pieces are adjacent and only the length grows. */
static int on_line(llhttp_t *p, const char *at, size_t len)
{
    struct head *hd = head_of(p);
    uint32_t off = (uint32_t)(at - hd->base);
    if (hd->line_len == 0) hd->line_off = off;
    hd->line_len = off + (uint32_t)len - hd->line_off;
    if (hd->line_len > REQUEST_LINE_MAX) {
        hd->error = HEAD_URI_TOO_LONG;
        return -1;
    }
    return 0;
}

int head_on_url(llhttp_t *p, const char *at, size_t len)
{
    return on_line(p, at, len);
}

int head_on_status(llhttp_t *p, const char *at, size_t len)
{
    return on_line(p, at, len);
}

int head_on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct head *hd = head_of(p);
    if (hd->frozen) return 0; /* trailers travel inside the raw chunked body */
    uint32_t off = (uint32_t)(at - hd->base);
    if (hd->n == 0 || hd->in_value) {
        if (hd->n >= hd->max) {
            hd->error = HEAD_TOO_MANY;
            return -1;
        }
        if (hd->n >= hd->cap) { /* most heads fit the first array; a long one doubles it */
            int cap = hd->cap * 2 < hd->max ? hd->cap * 2 : hd->max;
            struct hdr *g = realloc(hd->h, sizeof *g * (size_t)cap);
            if (!g) {
                hd->error = HEAD_TOO_MANY;
                return -1;
            }
            hd->h = g;
            hd->cap = cap;
        }
        struct hdr *h = &hd->h[hd->n++];
        h->name_off = off;
        h->name_len = 0;
        h->val_off = h->val_len = 0;
        h->kind = H_OTHER;
        h->hop = 0;
        hd->in_value = false;
    }
    struct hdr *h = &hd->h[hd->n - 1];
    uint32_t nl = off + (uint32_t)len - h->name_off;
    if (nl > 0xffff) {
        hd->error = HEAD_TOO_MANY;
        return -1;
    }
    h->name_len = (uint16_t)nl;
    return 0;
}

int head_on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct head *hd = head_of(p);
    if (hd->frozen) return 0;
    uint32_t off = (uint32_t)(at - hd->base);
    struct hdr *h = &hd->h[hd->n - 1];
    if (!hd->in_value) {
        hd->in_value = true;
        h->val_off = off;
    }
    h->val_len = off + (uint32_t)len - h->val_off;
    return 0;
}

struct known {
    const char *name;
    uint8_t len, kind, hop;
};

static const struct known known_headers[] = {
    {"host", 4, H_HOST, 1},
    {"connection", 10, H_CONNECTION, 1},
    {"keep-alive", 10, H_KEEP_ALIVE, 1},
    {"proxy-authorization", 19, H_PROXY_AUTHORIZATION, 1},
    {"proxy-connection", 16, H_PROXY_CONNECTION, 1},
    {"te", 2, H_TE, 1},
    {"trailer", 7, H_TRAILER, 1},
    {"upgrade", 7, H_UPGRADE, 1},
    {"authorization", 13, H_AUTHORIZATION, 0},
    {"via", 3, H_VIA, 0}, /* kept; ours is appended as a later Via line */
    {"content-length", 14, H_CONTENT_LENGTH, 0},
    {"transfer-encoding", 17, H_TRANSFER_ENCODING, 0},
    {"expect", 6, H_EXPECT, 0},
    {"retry-after", 11, H_RETRY_AFTER, 0},
};

static void classify(struct head *hd, struct hdr *h)
{
    const char *name = hdr_name(hd, h);
    for (size_t i = 0; i < sizeof known_headers / sizeof known_headers[0]; i++) {
        const struct known *k = &known_headers[i];
        if (k->len == h->name_len && ascii_ieq(name, k->name, k->len)) {
            h->kind = k->kind;
            h->hop = k->hop;
            return;
        }
    }
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Calls fn for each comma-separated element of a list value, trimmed of OWS. */
static void list_each(struct head *hd, struct hdr *h,
                      void (*fn)(struct head *, const char *, uint32_t, uint32_t))
{
    const char *v = hdr_value(hd, h);
    uint32_t i = 0, n = h->val_len;
    while (i < n) {
        while (i < n && (is_ows(v[i]) || v[i] == ','))
            i++;
        uint32_t s = i;
        while (i < n && v[i] != ',')
            i++;
        uint32_t e = i;
        while (e > s && is_ows(v[e - 1]))
            e--;
        if (e > s) fn(hd, v + s, h->val_off + s, e - s);
    }
}

static void conn_token(struct head *hd, const char *t, uint32_t off, uint32_t len)
{
    (void)off;
    if (len == 5 && ascii_ieq(t, "close", 5))
        hd->conn_close = true;
    else if (len == 10 && ascii_ieq(t, "keep-alive", 10))
        hd->conn_keep_alive = true;
}

/* A header named by Connection is hop-by-hop too, except the ones that frame the message:
 * dropping Content-Length or Transfer-Encoding while passing the body on would let the next
 * hop read the body as another message (request smuggling). */
static void conn_hop(struct head *hd, const char *t, uint32_t off, uint32_t len)
{
    (void)off;
    for (int i = 0; i < hd->n; i++) {
        struct hdr *h = &hd->h[i];
        if (h->kind == H_CONTENT_LENGTH || h->kind == H_TRANSFER_ENCODING) continue;
        if (h->name_len == len && ascii_ieq(hdr_name(hd, h), t, len)) h->hop = 1;
    }
}

static void te_coding(struct head *hd, const char *t, uint32_t off, uint32_t len)
{
    (void)off;
    hd->te_chunked_last = (len == 7 && ascii_ieq(t, "chunked", 7));
}

/* Field values: visible ASCII, obs-text, SP and HTAB; no CR/LF (obs-fold) and no other CTL. */
static bool value_ok(const char *v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
    }
    return true;
}

/* Field names: RFC 9110 tokens. */
static const bool tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

static bool name_ok(const char *s, uint32_t n)
{
    if (n == 0) return false;
    for (uint32_t i = 0; i < n; i++)
        if (!tchar[(unsigned char)s[i]]) return false;
    return true;
}

int head_analyze(struct head *hd)
{
    hd->frozen = true;
    for (int i = 0; i < hd->n; i++) {
        struct hdr *h = &hd->h[i];
        if (!name_ok(hdr_name(hd, h), h->name_len) || !value_ok(hdr_value(hd, h), h->val_len))
            return HEAD_BAD;
        /* the raw line ends where the next one starts (or at the blank line) */
        h->line_end = (i + 1 < hd->n) ? hd->h[i + 1].name_off : hd->end - 2;
        classify(hd, h);
        switch (h->kind) {
        case H_HOST:
            hd->n_host++;
            hd->host_idx = i;
            break;
        case H_CONTENT_LENGTH:
            hd->n_cl++;
            break;
        case H_TRANSFER_ENCODING:
            hd->n_te++;
            list_each(hd, h, te_coding);
            break;
        case H_CONNECTION:
        case H_PROXY_CONNECTION:
            list_each(hd, h, conn_token);
            break;
        case H_AUTHORIZATION:
            hd->auth_idx = i;
            break;
        case H_EXPECT:
            if (h->val_len == 12 && ascii_ieq(hdr_value(hd, h), "100-continue", 12))
                hd->expect_continue = true;
            break;
        default:
            break;
        }
    }
    for (int i = 0; i < hd->n; i++) /* however many names Connection lists */
        if (hd->h[i].kind == H_CONNECTION || hd->h[i].kind == H_PROXY_CONNECTION)
            list_each(hd, &hd->h[i], conn_hop);
    return HEAD_OK;
}

bool via_contains(const char *v, size_t n, const char *via)
{
    size_t vl = strlen(via);
    size_t i = 0;
    while (i < n) {
        /* element: protocol SP received-by [SP comment] */
        while (i < n && (is_ows(v[i]) || v[i] == ','))
            i++;
        while (i < n && !is_ows(v[i]) && v[i] != ',')
            i++; /* protocol */
        while (i < n && is_ows(v[i]))
            i++;
        size_t s = i;
        while (i < n && !is_ows(v[i]) && v[i] != ',')
            i++; /* received-by */
        if (i - s == vl && ascii_ieq(v + s, via, vl)) return true;
        int depth = 0; /* skip a comment, which may hold commas */
        while (i < n && (depth > 0 || v[i] != ',')) {
            if (v[i] == '(') depth++;
            if (v[i] == ')' && depth > 0) depth--;
            i++;
        }
    }
    return false;
}

int target_split(const char *url, size_t len, const char **auth, size_t *auth_len,
                 const char **path, size_t *path_len, bool *userinfo)
{
    size_t i;
    *userinfo = false;
    if (len >= 7 && ascii_ieq(url, "http://", 7))
        i = 7;
    else if (len >= 8 && ascii_ieq(url, "https://", 8))
        i = 8;
    else
        return -1;
    size_t s = i;
    while (i < len && url[i] != '/' && url[i] != '?' && url[i] != '#') {
        if (url[i] == '@') *userinfo = true;
        i++;
    }
    if (*userinfo || i == s) return -1;
    *auth = url + s;
    *auth_len = i - s;
    *path = url + i;
    *path_len = len - i;
    return 0;
}
