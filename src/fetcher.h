/* fetcher.h - HTTP requests to token endpoints with libcurl's multi-socket interface on a libuv
 * loop: one uv_poll_t per socket curl opens, one uv_timer_t for curl's timeouts, never a
 * blocking call. Connections to token endpoints are reused by the multi handle.
 *
 * A struct fetch is owned by its caller (embedded in a token slot); the fetcher owns the easy
 * handle while the transfer runs and calls done() exactly once, after which the caller may
 * reuse or free the fetch. The response body is malloc'd into f->body (at most
 * TOKEN_RESPONSE_MAX bytes) and freed by fetch_reset(). */
#ifndef AUTHPROXY_FETCHER_H
#define AUTHPROXY_FETCHER_H

#include <curl/curl.h>
#include <stdbool.h>
#include <time.h>
#include <uv.h>

#include "provider.h"

struct fetcher {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    char *ca_file; /* owned copy */
    int running;
    bool closing;
};

struct fetch {
    struct fetcher *f;
    CURL *easy;
    struct token_call call;
    void (*done)(struct fetch *fe);
    /* results */
    CURLcode result;
    long status;
    char *body;
    size_t len, cap;
    bool too_big;
    int retry_after_s; /* from a Retry-After header in seconds form, else 0 */
};

int fetcher_init(struct fetcher *f, uv_loop_t *loop, const char *ca_file);
int fetcher_set_ca(struct fetcher *f, const char *ca_file);
/* Closes the timer; transfers still running are cancelled without done(). */
void fetcher_close(struct fetcher *f);
/* Starts fe->call (built by provider_build; ownership passes to fe until fetch_reset). */
int fetcher_start(struct fetcher *f, struct fetch *fe, long timeout_ms);
/* A Retry-After value (n bytes, delay-seconds or an HTTP-date, RFC 9110 10.2.3) as seconds
 * from now; 0 when absent, past, unreadable or a day or more away. */
int retry_after_parse(const char *v, size_t n, time_t now);
/* Stops a running transfer without calling done(). */
void fetcher_cancel(struct fetch *fe);
/* Frees the call and the body; the fetch can be started again. */
void fetch_reset(struct fetch *fe);

#endif
