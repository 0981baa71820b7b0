/* http.h - an HTTP message head parsed in place, and the checks a proxy makes on it.
 *
 * A struct head records the request or status line and every header as offsets into the
 * connection's input buffer (never copies), filled by llhttp span callbacks. Offsets stay valid
 * when the buffer grows or moves as long as the caller rebases (head->base) before each parse.
 * The header array is owned by whoever embeds the head (a pooled exchange or upstream conn). */
#ifndef AUTHPROXY_HTTP_H
#define AUTHPROXY_HTTP_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define REQUEST_LINE_MAX 8192

enum hdr_kind {
    H_OTHER,
    H_HOST,
    H_CONNECTION,
    H_KEEP_ALIVE,
    H_PROXY_AUTHORIZATION,
    H_PROXY_CONNECTION,
    H_TE,
    H_TRAILER,
    H_UPGRADE,
    H_AUTHORIZATION,
    H_VIA,
    H_CONTENT_LENGTH,
    H_TRANSFER_ENCODING,
    H_EXPECT,
    H_RETRY_AFTER,
    H_LOCATION,
    H_CONTENT_LOCATION,
};

struct hdr {
    uint32_t name_off, val_off, val_len, line_end;
    uint16_t name_len;
    uint8_t kind;
    uint8_t hop; /* removed when forwarding */
};

enum head_error {
    HEAD_OK,
    HEAD_TOO_MANY,     /* more than max headers -> 431 */
    HEAD_URI_TOO_LONG, /* -> 414 */
    HEAD_BAD,          /* -> 400 */
};

struct head {
    const char *base; /* the input buffer, set before each llhttp_execute */
    struct hdr *h;    /* cap entries, malloc'd unless cap == max; grows up to max */
    int n, cap, max;
    bool in_value;
    bool frozen;    /* analysed: later header callbacks (chunked trailers) are only counted */
    uint8_t error;  /* enum head_error */
    uint32_t start; /* offset of the first byte of the message */
    uint32_t line_off, line_len; /* url (request) or status text (response) */
    uint32_t end;                /* offset just past the blank line */
    uint32_t max_bytes;          /* trailers: at most max fields and max_bytes (431 beyond) */
    int trailer_n;
    uint32_t trailer_bytes;
    /* what the checks found */
    int n_host, n_cl, n_te;
    int host_idx, auth_idx;
    bool conn_close, conn_keep_alive, expect_continue;
    bool te_chunked_last; /* the last Transfer-Encoding coding is chunked */
};

/* llhttp callbacks that fill the head; parser->data must point at a struct whose first member
 * is the struct head (see head_of). */
int head_on_url(llhttp_t *p, const char *at, size_t len);
int head_on_status(llhttp_t *p, const char *at, size_t len);
int head_on_header_field(llhttp_t *p, const char *at, size_t len);
int head_on_header_value(llhttp_t *p, const char *at, size_t len);

void head_reset(struct head *hd, uint32_t start);

/* After llhttp's on_headers_complete: classifies headers, collects Connection tokens, marks
 * hop-by-hop headers, validates bytes. Returns HEAD_OK or HEAD_BAD. */
int head_analyze(struct head *hd);

static inline const char *hdr_name(const struct head *hd, const struct hdr *h)
{
    return hd->base + h->name_off;
}
static inline const char *hdr_value(const struct head *hd, const struct hdr *h)
{
    return hd->base + h->val_off;
}

/* Case-insensitive ASCII compare of equal-length strings. */
bool ascii_ieq(const char *a, const char *b, size_t n);

/* Does a Via value list name `via` as a received-by pseudonym? ("1.1 gw1, 1.0 x (c)") */
bool via_contains(const char *value, size_t len, const char *via);

/* Splits an absolute-form target "http://host[:port]/path?q". Returns 0 and sets the authority
 * and path (path "" when absent) slices; -1 when malformed or when it has userinfo (*userinfo
 * set). */
int target_split(const char *url, size_t len, const char **auth, size_t *auth_len,
                 const char **path, size_t *path_len, bool *userinfo);

#endif
