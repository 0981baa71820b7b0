/* router.c - host normalisation and route matching, on the request hot path.
 *
 * Pure functions over an immutable struct config: they allocate nothing, keep no state and use
 * no locale-dependent function (ASCII case folding is done by hand). The caller owns every
 * buffer passed in; returned routes point into the config snapshot the caller holds a
 * reference to. */
#include "router.h"

#include <arpa/inet.h>
#include <string.h>

#define PORT_DIGITS_MAX 5

static char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static bool is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
}

static bool is_v6_char(char c)
{
    return (c >= 'a' && c <= 'f') || (c >= '0' && c <= '9') || c == ':' || c == '.';
}

/* ":port" or "" after the host. An empty port ("host:") means the default, as RFC 3986
 * allows. Returns 0 or -1. */
static int parse_port(const char *s, size_t len, int default_port, int *port)
{
    if (len == 0) {
        *port = default_port;
        return 0;
    }
    if (s[0] != ':') return -1;
    s++;
    len--;
    if (len == 0) {
        *port = default_port;
        return 0;
    }
    if (len > PORT_DIGITS_MAX) return -1;
    int value = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        value = value * 10 + (s[i] - '0');
    }
    if (value < 1 || value > 65535) return -1;
    *port = value;
    return 0;
}

int host_normalize(const char *in, size_t len, int default_port, char out[HOST_MAX], int *port)
{
    if (!in || len == 0) return -1;
    if (memchr(in, '@', len)) return -1;

    const char *rest;
    if (in[0] == '[') {
        const char *close = memchr(in, ']', len);
        if (!close) return -1;
        size_t hlen = (size_t)(close - in) - 1;
        if (hlen == 0 || hlen >= HOST_MAX) return -1;
        for (size_t i = 0; i < hlen; i++) {
            char c = ascii_lower(in[1 + i]);
            if (!is_v6_char(c)) return -1;
            out[i] = c;
        }
        out[hlen] = '\0';
        unsigned char addr[sizeof(struct in6_addr)];
        if (inet_pton(AF_INET6, out, addr) != 1) return -1;
        rest = close + 1;
    } else {
        size_t hlen = 0;
        while (hlen < len && in[hlen] != ':')
            hlen++;
        if (hlen == 0 || hlen >= HOST_MAX) return -1;
        for (size_t i = 0; i < hlen; i++) {
            char c = ascii_lower(in[i]);
            if (!is_name_char(c)) return -1;
            /* no empty label: no leading dot, no "..", at most one trailing dot */
            if (c == '.' && (i == 0 || out[i - 1] == '.')) return -1;
            out[i] = c;
        }
        rest = in + hlen;
        if (out[hlen - 1] == '.') hlen--;
        if (hlen == 0) return -1;
        out[hlen] = '\0';
    }
    if (parse_port(rest, len - (size_t)(rest - in), default_port, port) < 0) return -1;
    return 0;
}

static bool host_matches(const struct route_config *r, const char *host, size_t host_len, int port)
{
    if (r->host_port != 0 && r->host_port != port) return false;
    size_t rlen = r->host_len;
    if (r->host_wildcard) /* ".x.com" matches "a.x.com", "b.a.x.com", never "x.com" */
        return host_len > rlen && memcmp(host + host_len - rlen, r->host, rlen) == 0;
    return host_len == rlen && memcmp(host, r->host, rlen) == 0;
}

const struct route_config *router_match(const struct config *c, const char *host, int port,
                                        const char *path, size_t path_len, bool origin_form)
{
    size_t host_len = host ? strlen(host) : 0;
    for (int i = 0; i < c->n_routes; i++) {
        const struct route_config *r = &c->routes[i];
        if (r->host && (host_len == 0 || !host_matches(r, host, host_len, port))) continue;
        if (r->path_prefix) {
            size_t plen = r->prefix_len;
            if (!origin_form || !path || path_len < plen) continue;
            if (memcmp(path, r->path_prefix, plen) != 0) continue;
        }
        return r;
    }
    return NULL;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c = ascii_lower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static bool unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

/* The segment just written, out[s, w), is "." or "..": drop it as 5.2.4 says (a last one
 * leaves its '/'). Returns the new w, or -1 when ".." would climb above the root. */
static long dot_segment(char *out, size_t s, size_t w, bool last)
{
    size_t n = w - s;
    bool dot = n == 1 && out[s] == '.', dotdot = n == 2 && out[s] == '.' && out[s + 1] == '.';
    if (!dot && !dotdot) return (long)w;
    w = s - 1; /* before the segment's '/' */
    if (dotdot) {
        if (w == 0) return -1; /* "/.." */
        while (w > 0 && out[w - 1] != '/')
            w--;
        w--; /* the '/' before the dropped segment */
    }
    if (last) out[w++] = '/';
    return (long)w;
}

int path_normalize(const char *in, size_t len, char *out, size_t *out_len)
{
    size_t i = 0, w = 0, seg = 0;
    if (len == 0 || in[0] != '/') return -1;
    while (i < len && in[i] != '?') {
        char c = in[i];
        if (c == '/') {
            if (w > 0) {
                long r = dot_segment(out, seg, w, false);
                if (r < 0) return -1;
                w = (size_t)r;
            }
            out[w++] = '/';
            seg = w;
            i++;
            continue;
        }
        if (c == '\\') return -1;
        if (c == '%') {
            int hi = i + 2 < len ? hexval(in[i + 1]) : -1, lo = hi >= 0 ? hexval(in[i + 2]) : -1;
            if (lo < 0) return -1;
            unsigned char v = (unsigned char)(hi * 16 + lo);
            if (v == '/' || v == '\\') return -1;
            if (unreserved(v)) {
                out[w++] = (char)v;
            } else {
                static const char hex[] = "0123456789ABCDEF";
                out[w++] = '%';
                out[w++] = hex[v >> 4];
                out[w++] = hex[v & 15];
            }
            i += 3;
            continue;
        }
        out[w++] = c;
        i++;
    }
    long r = dot_segment(out, seg, w, true);
    if (r < 0) return -1;
    w = (size_t)r;
    memcpy(out + w, in + i, len - i); /* the query as it came */
    *out_len = w + (len - i);
    return 0;
}

size_t router_strip_len(const struct route_config *r, const char *path, size_t path_len)
{
    if (!r->strip_prefix || !r->path_prefix) return 0;
    size_t plen = r->prefix_len;
    if (path_len < plen || memcmp(path, r->path_prefix, plen) != 0) return 0;
    /* "/eptura/" on "/eptura/v1": keep the prefix's own last '/' as the remainder's first byte */
    if (r->path_prefix[plen - 1] == '/') return plen - 1;
    return plen;
}
