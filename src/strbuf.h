/* strbuf.h - a growable text buffer for answers whose size depends on the configuration or on
 * what clients did (the admin endpoints' /metrics and /tokens bodies): appends never write past
 * the end, whatever the output grows to.
 *
 * The caller owns the struct (usually on its stack) and frees p with strbuf_free. After an
 * allocation fails the buffer keeps what it had, stops growing and reports it in oom. */
#ifndef AUTHPROXY_STRBUF_H
#define AUTHPROXY_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

struct strbuf {
    char *p; /* NUL-terminated once anything was appended */
    size_t len, cap;
    bool oom;
};

/* Appends printf-formatted text. */
void strbuf_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends n bytes. */
void strbuf_add(struct strbuf *b, const char *s, size_t n);
/* Appends s as the body of a JSON string (quotes, backslashes and control bytes escaped). */
void strbuf_json(struct strbuf *b, const char *s);
void strbuf_free(struct strbuf *b);

#endif
