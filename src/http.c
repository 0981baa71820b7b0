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
    hd->trailer_n = 0;
    hd->trailer_bytes = 0;
    hd->n_host = hd->n_cl = hd->n_te = 0;
    hd->host_idx = hd->auth_idx = -1;
    hd->conn_close = hd->conn_keep_alive = hd->expect_continue = false;
    hd->te_chunked_last = false;
}

/* Span callbacks may be called several times for one element when it arrives split over reads;
 * the input buffer is contiguous, so the pieces are adjacent and only the length grows. */
static void on_line(struct head *hd, const char *at, size_t len)
{
    uint32_t off = (uint32_t)(at - hd->base);
    if (hd->line_len == 0) hd->line_off = off;
    hd->line_len = off + (uint32_t)len - hd->line_off;
}

static int too_long(struct head *hd, uint32_t n)
{
    if (n <= REQUEST_LINE_MAX) return 0;
    hd->error = HEAD_URI_TOO_LONG;
    return -1;
}

/* The limit is on the whole request line: the method and SP from the head's start, the target,
 * then " HTTP/1.x" (9 bytes, the only versions llhttp's strict mode takes) still to come. */
int head_on_url(llhttp_t *p, const char *at, size_t len)
{
    struct head *hd = head_of(p);
    on_line(hd, at, len);
    uint32_t before = hd->line_off > hd->start ? hd->line_off - hd->start : 0;
    return too_long(hd, before + hd->line_len + 9);
}

int head_on_status(llhttp_t *p, const char *at, size_t len)
{
    struct head *hd = head_of(p);
    on_line(hd, at, len);
    return too_long(hd, hd->line_len);
}

/* A trailer field's bytes: counted against the head's limits, never kept (request trailers are
 * dropped; the body is forwarded without them). */
static int trailer_bytes(struct head *hd, size_t len, bool name)
{
    if (name && hd->in_value) hd->trailer_n++;
    hd->in_value = !name;
    hd->trailer_bytes += (uint32_t)len;
    if (hd->trailer_n <= hd->max && hd->trailer_bytes <= hd->max_bytes) return 0;
    hd->error = HEAD_TOO_MANY;
    return -1;
}

int head_on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct head *hd = head_of(p);
    if (hd->frozen) return trailer_bytes(hd, len, true);
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
    if (hd->frozen) return trailer_bytes(hd, len, false);
    uint32_t off = (uint32_t)(at - hd->base);
    struct hdr *h = &hd->h[hd->n - 1];
    if (!hd->in_value) {
        hd->in_value = true;
        h->val_off = off;
    }
    h->val_len = off + (uint32_t)len - h->val_off;
    return 0;
}

/* Is name (a validated token) equal to lit (lowercase letters and '-'), ignoring case? For a
 * token byte, (c | 0x20) equals a lowercase letter only for that letter in either case, and
 * equals '-' only for '-' (the other candidate, CR, is no token byte). */
static bool token_is(const char *name, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((name[i] | 0x20) != lit[i]) return false;
    return true;
}

/* The headers a proxy acts on, found by length first: one comparison per header at most. */
static void classify(struct head *hd, struct hdr *h)
{
    const char *n = hdr_name(hd, h);
    uint8_t kind = H_OTHER, hop = 1;
#define IS(lit) token_is(n, lit, sizeof(lit) - 1)
    switch (h->name_len) {
    case 2:
        if (IS("te")) kind = H_TE;
        break;
    case 3:
        if (IS("via")) kind = H_VIA, hop = 0; /* kept; ours is appended as a later Via line */
        break;
    case 4:
        if (IS("host")) kind = H_HOST;
        break;
    case 6:
        if (IS("expect")) kind = H_EXPECT, hop = 0;
        break;
    case 8:
        if (IS("location")) kind = H_LOCATION, hop = 0;
        break;
    case 7:
        if ((n[0] | 0x20) == 't' ? IS("trailer") : false)
            kind = H_TRAILER;
        else if (IS("upgrade"))
            kind = H_UPGRADE;
        break;
    case 10:
        if ((n[0] | 0x20) == 'c' ? IS("connection") : false)
            kind = H_CONNECTION;
        else if (IS("keep-alive"))
            kind = H_KEEP_ALIVE;
        break;
    case 11:
        if (IS("retry-after")) kind = H_RETRY_AFTER, hop = 0;
        break;
    case 13:
        if (IS("authorization")) kind = H_AUTHORIZATION, hop = 0;
        break;
    case 14:
        if (IS("content-length")) kind = H_CONTENT_LENGTH, hop = 0;
        break;
    case 16:
        if ((n[0] | 0x20) == 'p' ? IS("proxy-connection") : false)
            kind = H_PROXY_CONNECTION;
        else if (IS("content-location"))
            kind = H_CONTENT_LOCATION, hop = 0;
        break;
    case 17:
        if (IS("transfer-encoding")) kind = H_TRANSFER_ENCODING, hop = 0;
        break;
    case 19:
        if (IS("proxy-authorization")) kind = H_PROXY_AUTHORIZATION;
        break;
    default:
        break;
    }
#undef IS
    h->kind = kind;
    h->hop = kind != H_OTHER && hop;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Calls fn for each comma-separated element of a list value, trimmed of OWS. */
static void list_each(struct head *hd, struct hdr *h,
                      void (*fn)(struct head *, const char *, uint32_t))
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
        if (e > s) fn(hd, v + s, e - s);
    }
}

/* A Connection option: close and keep-alive are noted; a header it names is hop-by-hop too,
 * except the ones that frame the message: dropping Content-Length or Transfer-Encoding while
 * passing the body on would let the next hop read the body as another message (request
 * smuggling). */
static void conn_token(struct head *hd, const char *t, uint32_t len)
{
    if (len == 5 && ascii_ieq(t, "close", 5))
        hd->conn_close = true;
    else if (len == 10 && ascii_ieq(t, "keep-alive", 10)) {
        hd->conn_keep_alive = true;
        return; /* a header of that name is hop-by-hop already */
    }
    for (int i = 0; i < hd->n; i++) {
        struct hdr *h = &hd->h[i];
        if (h->kind == H_CONTENT_LENGTH || h->kind == H_TRANSFER_ENCODING) continue;
        if (h->name_len == len && ascii_ieq(hdr_name(hd, h), t, len)) h->hop = 1;
    }
}

static void te_coding(struct head *hd, const char *t, uint32_t len)
{
    hd->te_chunked_last = (len == 7 && ascii_ieq(t, "chunked", 7));
}

/* Field bytes: llhttp's strict machine refuses every byte a name (RFC 9110 token) or a value
 * (VCHAR, obs-text, SP, HTAB) may not hold -- test_http.c checks all 256 for both -- but it
 * accepts an empty name and an obs-fold, whose CR LF then sits inside the value span. */
static bool field_ok(const struct head *hd, const struct hdr *h)
{
    return h->name_len != 0 && !memchr(hdr_value(hd, h), '\r', h->val_len);
}

int head_analyze(struct head *hd)
{
    hd->frozen = true;
    hd->in_value = true; /* a trailer field's name starts a field (trailer_bytes) */
    for (int i = 0; i < hd->n; i++) {
        struct hdr *h = &hd->h[i];
        if (!field_ok(hd, h)) return HEAD_BAD;
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
            list_each(hd, &hd->h[i], conn_token);
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
