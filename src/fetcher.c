/* fetcher.c - libcurl multi-socket on libuv (see fetcher.h).
 *
 * Memory: a struct sock_ctx per socket curl asks us to watch, freed in its poll handle's close
 * callback; easy handles are created per transfer and cleaned up when it ends.
 *
 * While a transfer is pending: its easy handle belongs to the multi handle and its struct fetch
 * to the caller, who cancels it (fetcher_cancel) before freeing the fetch. done() runs only
 * from a libuv callback (poll or timer), never inside fetcher_start, and may close the whole
 * fetcher: check_done stops reading messages once the multi handle is gone. */
#include "fetcher.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    struct fetcher *f;
};

static void check_done(struct fetcher *f)
{
    CURLMsg *m;
    int left;
    /* done() may close the fetcher (the last revocation at exit ends the cache) */
    while (f->multi && (m = curl_multi_info_read(f->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        struct fetch *fe = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&fe);
        fe->result = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &fe->status);
        curl_multi_remove_handle(f->multi, m->easy_handle);
        curl_easy_cleanup(m->easy_handle);
        fe->easy = NULL;
        fe->done(fe);
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct sock_ctx *s = h->data;
    int flags = 0;
    if (status < 0) flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    struct fetcher *f = s->f;
    curl_multi_socket_action(f->multi, s->fd, flags, &f->running);
    check_done(f);
}

static void on_timeout(uv_timer_t *t)
{
    struct fetcher *f = t->data;
    curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0, &f->running);
    check_done(f);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct fetcher *f = userp;
    if (f->closing) return 0;
    if (timeout_ms < 0)
        uv_timer_stop(&f->timer);
    else
        uv_timer_start(&f->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

static void on_sock_closed(uv_handle_t *h)
{
    free(h->data);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    struct fetcher *f = userp;
    struct sock_ctx *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, on_sock_closed);
            curl_multi_assign(f->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) return -1;
        s->fd = fd;
        s->f = f;
        if (uv_poll_init_socket(f->loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        curl_multi_assign(f->multi, fd, s);
    }
    int ev = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) ev |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) ev |= UV_WRITABLE;
    uv_poll_start(&s->poll, ev, on_poll);
    return 0;
}

int fetcher_init(struct fetcher *f, uv_loop_t *loop, const char *ca_file)
{
    memset(f, 0, sizeof *f);
    f->loop = loop;
    if (fetcher_set_ca(f, ca_file) < 0) return -1;
    f->multi = curl_multi_init();
    if (!f->multi) return -1;
    uv_timer_init(loop, &f->timer);
    f->timer.data = f;
    curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f);
    curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f);
    return 0;
}

int fetcher_set_ca(struct fetcher *f, const char *ca_file)
{
    char *c = strdup(ca_file);
    if (!c) return -1;
    free(f->ca_file);
    f->ca_file = c;
    return 0;
}

void fetcher_close(struct fetcher *f)
{
    free(f->ca_file);
    f->ca_file = NULL;
    if (!f->multi) return;
    f->closing = true;
    uv_timer_stop(&f->timer);
    uv_close((uv_handle_t *)&f->timer, NULL);
    /* cleanup calls socket_cb(REMOVE) for open sockets, closing their poll handles */
    curl_multi_cleanup(f->multi);
    f->multi = NULL;
}

static size_t on_body(char *ptr, size_t size, size_t n, void *userp)
{
    struct fetch *fe = userp;
    size_t len = size * n;
    if (fe->len + len > TOKEN_RESPONSE_MAX) {
        fe->too_big = true;
        return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
    }
    if (fe->len + len + 1 > fe->cap) {
        size_t cap = fe->cap ? fe->cap : 4096;
        while (cap < fe->len + len + 1)
            cap *= 2;
        char *b = malloc(cap);
        if (!b) return 0;
        if (fe->body) {
            memcpy(b, fe->body, fe->len);
            OPENSSL_cleanse(fe->body, fe->len);
            free(fe->body);
        }
        fe->body = b;
        fe->cap = cap;
    }
    memcpy(fe->body + fe->len, ptr, len);
    fe->len += len;
    fe->body[fe->len] = 0;
    return len;
}

int retry_after_parse(const char *v, size_t n, time_t now)
{
    char b[64];
    while (n && (*v == ' ' || *v == '\t')) {
        v++;
        n--;
    }
    while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n == 0 || n >= sizeof b) return 0;
    memcpy(b, v, n);
    b[n] = 0;
    long s;
    if (b[0] >= '0' && b[0] <= '9') { /* delay-seconds */
        char *end;
        s = strtol(b, &end, 10);
        if (*end) return 0;
    } else { /* HTTP-date */
        time_t t = curl_getdate(b, NULL);
        if (t < 0) return 0;
        s = (long)(t - now);
    }
    return s > 0 && s < 86400 ? (int)s : 0;
}

static size_t on_header(char *ptr, size_t size, size_t n, void *userp)
{
    struct fetch *fe = userp;
    size_t len = size * n;
    if (len > 12 && strncasecmp(ptr, "retry-after:", 12) == 0)
        fe->retry_after_s = retry_after_parse(ptr + 12, len - 12, time(NULL));
    return len;
}

int fetcher_start(struct fetcher *f, struct fetch *fe, long timeout_ms)
{
    fe->f = f;
    fe->result = CURLE_OK;
    fe->status = 0;
    fe->len = 0;
    fe->too_big = false;
    fe->retry_after_s = 0;
    CURL *e = curl_easy_init();
    if (!e) return -1;
    if (timeout_ms < 1) timeout_ms = 1;
    curl_easy_setopt(e, CURLOPT_URL, fe->call.url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, fe);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, fe->call.body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)fe->call.body_len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, fe->call.headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, fe);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, fe);
    curl_easy_setopt(e, CURLOPT_CAINFO, f->ca_file);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "authproxy");
    fe->easy = e;
    if (curl_multi_add_handle(f->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        fe->easy = NULL;
        return -1;
    }
    return 0;
}

void fetcher_cancel(struct fetch *fe)
{
    if (!fe->easy) return;
    curl_multi_remove_handle(fe->f->multi, fe->easy);
    curl_easy_cleanup(fe->easy);
    fe->easy = NULL;
}

void fetch_reset(struct fetch *fe)
{
    token_call_free(&fe->call);
    if (fe->body) {
        OPENSSL_cleanse(fe->body, fe->len);
        free(fe->body);
    }
    fe->body = NULL;
    fe->len = fe->cap = 0;
}
