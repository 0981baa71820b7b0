/* proxy.c - one request's life (see proxy.h).
 *
 * What is sent (request head with the token), how the response starts (head rewrite, 401
 * detection later) and how bodies stream (raw byte ranges with backpressure) are kept apart:
 * send_head(), resp_head(), and the body relays.
 *
 * Memory: exchanges come from and go back to the loop's free list; their header arrays and
 * head buffers are allocated once per exchange object. Request and response bytes are parsed
 * in place in the input buffers (usually the loop's shared read block) and written from there;
 * a write that cannot complete at once copies its rest (server.c, upstream.c), so nothing
 * points into an input buffer after the read callback. The upstream request head without the
 * token is saved (out of the client's buffer) for a replay or a retry on a fresh connection.
 *
 * While something is pending on an exchange: a token wait is embedded (ex->tw) and withdrawn
 * by proxy_exchange_free (token_cancel), the upstream connection is closed there (upconn_close
 * clears its ops first, so no callback reaches a freed exchange), and neither the token cache
 * nor upstream.c calls back from inside a call made here (but for the flag-setting pending
 * callbacks of a write, sock.h). Every iovec into the replay buffer is
 * taken after the last replay_keep of that write (the buffer moves when it grows). */
#include "proxy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "loop.h"
#include "server.h"
#include "upstream.h"

#define FREE_EXCHANGES_MAX 256
#define EX_OUT_SIZE 1024   /* head scratch; grows for larger heads, shrinks back after */
#define EX_SAVED_SIZE 2048 /* a saved request head larger than this is not kept pooled */
#define EX_HDRS 24         /* header entries per head before it grows (up to max_headers) */
#define AUTHORITY_MAX (HOST_MAX + 8)
#define REQ_IOV_MAX 48

static void up_ready(void *arg, struct upconn *up, int err);
static void up_data(void *arg, struct upconn *up);
static void up_closed(void *arg, struct upconn *up, int err);
static void up_drained(void *arg, struct upconn *up);
static void resp_process(struct exchange *ex);
static void maybe_finish(struct exchange *ex);
static void connect_upstream(struct exchange *ex, bool fresh);
static void replay_free(struct exchange *ex);

static void up_pending(void *arg, struct upconn *up);
static const struct upconn_ops up_ops = {up_ready, up_data, up_closed, up_drained, up_pending};

/* ---- exchange objects ---- */

static void exchange_destroy(struct exchange *ex)
{
    free(ex->req.h);
    free(ex->resp.h);
    free(ex->out);
    free(ex->saved);
    free(ex);
}

struct exchange *proxy_exchange_new(struct loop *l, struct client *c)
{
    struct exchange *ex = l->free_ex;
    if (ex) {
        l->free_ex = ex->next_free;
        l->n_free_ex--;
    } else {
        ex = calloc(1, sizeof *ex);
        if (!ex) return NULL;
        ex->req.cap = ex->resp.cap = EX_HDRS;
        ex->req.h = malloc(sizeof(struct hdr) * EX_HDRS);
        ex->resp.h = malloc(sizeof(struct hdr) * EX_HDRS);
        ex->out_cap = EX_OUT_SIZE;
        ex->out = malloc(ex->out_cap);
        if (!ex->req.h || !ex->resp.h || !ex->out) {
            exchange_destroy(ex);
            return NULL;
        }
    }
    struct head rq = ex->req, rs = ex->resp;
    char *out = ex->out, *saved = ex->saved;
    uint32_t out_cap = ex->out_cap, saved_cap = ex->saved_cap;
    memset(ex, 0, offsetof(struct exchange, host));
    ex->req.h = rq.h;
    ex->req.cap = rq.cap;
    ex->resp.h = rs.h;
    ex->resp.cap = rs.cap;
    ex->req.max = ex->resp.max = (int)l->cfg->limits.max_headers;
    ex->req.max_bytes = ex->resp.max_bytes = (uint32_t)l->cfg->limits.max_header_bytes;
    ex->out = out;
    ex->out_cap = out_cap;
    ex->saved = saved;
    ex->saved_cap = saved_cap;
    ex->host[0] = '\0'; /* a request that names no host must not route by a previous one's */
    ex->port = 0;
    ex->tok.token = NULL;
    ex->tok.status = 0;
    ex->loop = l;
    ex->c = c;
    ex->cfg = config_ref(l->cfg);
    ex->t_start = uv_now(&l->uv);
    l->active_ex++;
    if (l->active_ex > l->peak_ex) l->peak_ex = l->active_ex;
    return ex;
}

/* Gives back what one long head made grow, so a pooled exchange stays small. */
static void shrink(void **p, uint32_t *cap, uint32_t small)
{
    if (*cap <= small) return;
    void *n = malloc(small);
    if (!n) return;
    free(*p);
    *p = n;
    *cap = small;
}

static void shrink_hdrs(struct head *hd)
{
    if (hd->cap <= EX_HDRS) return;
    struct hdr *n = malloc(sizeof *n * EX_HDRS);
    if (!n) return;
    free(hd->h);
    hd->h = n;
    hd->cap = EX_HDRS;
}

void proxy_exchange_free(struct exchange *ex)
{
    struct loop *l = ex->loop;
    if (ex->state == EX_TOKEN) token_cancel(l, &ex->tw);
    if (ex->up) {
        upconn_close(ex->up);
        ex->up = NULL;
    }
    token_put(ex->tok.token);
    ex->tok.token = NULL;
    replay_free(ex); /* a body to a token route, or an idempotent one on a reused connection */
    config_unref(ex->cfg);
    ex->cfg = NULL;
    l->active_ex--;
    if (l->n_free_ex >= FREE_EXCHANGES_MAX) {
        exchange_destroy(ex);
        return;
    }
    shrink((void **)&ex->out, &ex->out_cap, EX_OUT_SIZE);
    shrink((void **)&ex->saved, &ex->saved_cap, EX_SAVED_SIZE);
    shrink_hdrs(&ex->req);
    shrink_hdrs(&ex->resp);
    ex->next_free = l->free_ex;
    l->free_ex = ex;
    l->n_free_ex++;
}

void proxy_free_list_trim(struct loop *l, int keep)
{
    while (l->free_ex && l->n_free_ex > keep) {
        struct exchange *ex = l->free_ex;
        l->free_ex = ex->next_free;
        l->n_free_ex--;
        exchange_destroy(ex);
    }
}

void proxy_count(struct loop *l, const struct exchange *ex, int status)
{
    int cls = status >= 100 && status < 600 ? status / 100 : 0;
    l->stats.requests_by_class[cls]++;
    if (!ex || !ex->route || ex->cfg != l->cfg || !l->route_stats) return;
    long i = ex->route - ex->cfg->routes;
    if (i >= 0 && i < l->n_route_stats) l->route_stats[i][cls]++;
}

/* Appends a string; the hot paths build heads with these rather than printf. */
static inline size_t put(char *o, const char *s, size_t n)
{
    memcpy(o, s, n);
    return n;
}
#define PUT_LIT(o, lit) put((o), (lit), sizeof(lit) - 1)

static int ensure_out(struct exchange *ex, size_t need)
{
    if (need <= ex->out_cap) return 0;
    char *n = malloc(need);
    if (!n) return -1;
    free(ex->out);
    ex->out = n;
    ex->out_cap = (uint32_t)need;
    return 0;
}

/* ---- errors ---- */

static const char *provider_name(const struct exchange *ex)
{
    if (!ex->route || ex->route->provider < 0) return NULL;
    return ex->cfg->providers[ex->route->provider].name;
}

static void fail(struct exchange *ex, int status, const char *code, const char *detail)
{
    client_error(ex->c, status, code, detail, provider_name(ex), 0);
}

static void fail_upstream(struct exchange *ex, int err)
{
    char d[HOST_MAX + 64];
    /* the upstream waited for body bytes the client did not send: the client's timeout */
    if (err == UP_TIMEOUT && ex->head_sent && ex->has_body && !ex->req_complete &&
        !ex->up_write_pending) {
        client_error(ex->c, 408, "request_timeout", "the request body was not received in time",
                     NULL, 0);
        return;
    }
    if (err == UP_TIMEOUT) {
        snprintf(d, sizeof d, "upstream %s:%d did not answer in time", ex->up_host, ex->up_port);
        fail(ex, 504, "upstream_timeout", d);
    } else {
        snprintf(d, sizeof d, "upstream %s:%d refused, reset or failed", ex->up_host, ex->up_port);
        fail(ex, 502, "upstream_unavailable", d);
    }
}

/* ---- request ---- */

static bool idempotent(uint8_t m)
{
    return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS || m == HTTP_PUT ||
           m == HTTP_DELETE || m == HTTP_TRACE;
}

static void on_token(struct token_wait *w, const struct token_result *r)
{
    struct exchange *ex = container_of(w, struct exchange, tw);
    token_put(ex->tok.token);
    ex->tok = *r;
    if (r->status) {
        ex->state = EX_HEAD;
        client_error(ex->c, r->status, r->error, r->detail, provider_name(ex), r->retry_after_s);
        return;
    }
    connect_upstream(ex, false);
}

void proxy_request(struct exchange *ex)
{
    struct client *c = ex->c;
    struct head *hd = &ex->req;
    const struct config *cfg = ex->cfg;
    char d[HOST_MAX + 96];

    ex->method = (uint8_t)llhttp_get_method(&ex->parser);
    ex->http_minor = llhttp_get_http_minor(&ex->parser);
    ex->client_keep_alive = llhttp_should_keep_alive(&ex->parser);
    if (llhttp_get_http_major(&ex->parser) != 1)
        return fail(ex, 400, "bad_request", "only HTTP/1.0 and HTTP/1.1 are served");
    if (head_analyze(hd) != HEAD_OK)
        return fail(ex, 400, "bad_request", "a header name or value holds a forbidden character");
    if (ex->method == HTTP_CONNECT)
        return fail(ex, 405, "connect_not_supported",
                    "CONNECT opens a tunnel into which no token can be injected; send plain "
                    "HTTP requests to this proxy instead");
    if (hd->n_te > 0 && ex->http_minor == 0)
        return fail(ex, 400, "bad_request", "Transfer-Encoding is not allowed in HTTP/1.0");
    if (hd->n_te > 0 && !hd->te_chunked_last)
        return fail(ex, 400, "bad_request", "the final transfer coding must be chunked");
    if (hd->n_cl > 1 || (hd->n_cl > 0 && hd->n_te > 0))
        return fail(ex, 400, "bad_request", "conflicting message length headers");
    if (hd->n_host > 1) return fail(ex, 400, "bad_request", "more than one Host header");
    ex->has_body = hd->n_te > 0 || (hd->n_cl > 0 && ex->parser.content_length > 0);
    ex->req_chunked = hd->n_te > 0;

    const char *url = hd->base + hd->line_off;
    size_t url_len = hd->line_len;
    const char *path;
    size_t path_len;
    if (url_len > 0 && (url[0] == '/' || (url_len == 1 && url[0] == '*'))) {
        ex->origin_form = true;
        path = url;
        path_len = url_len;
        if (hd->host_idx >= 0) {
            const struct hdr *h = &hd->h[hd->host_idx];
            if (host_normalize(hdr_value(hd, h), h->val_len, 80, ex->host, &ex->port) < 0)
                return fail(ex, 400, "bad_request", "the Host header is malformed");
        } else if (ex->http_minor >= 1) {
            return fail(ex, 400, "bad_request", "HTTP/1.1 requests need a Host header");
        }
    } else {
        const char *auth;
        size_t auth_len;
        bool userinfo;
        if (target_split(url, url_len, &auth, &auth_len, &path, &path_len, &userinfo) < 0)
            return fail(ex, 400, "bad_request",
                        userinfo ? "the request target must not carry userinfo"
                                 : "the request target is malformed");
        int defport = (url[4] == 's' || url[4] == 'S') ? 443 : 80;
        if (host_normalize(auth, auth_len, defport, ex->host, &ex->port) < 0)
            return fail(ex, 400, "bad_request", "the request target's host is malformed");
    }
    ex->path_off = (uint32_t)(path - hd->base);
    ex->path_len = (uint32_t)path_len;

    for (int i = 0; i < hd->n; i++) {
        const struct hdr *h = &hd->h[i];
        if (h->kind == H_VIA && via_contains(hdr_value(hd, h), h->val_len, cfg->via)) {
            snprintf(d, sizeof d, "the request already passed through %s", cfg->via);
            return fail(ex, 508, "loop_detected", d);
        }
    }

    /* gateway routes match and forward the normalised path (SPEC "Routes"); it is made in the
     * scratch and, for such a route, written back over the target (it is never longer) */
    size_t norm_len = 0;
    bool norm_ok = false;
    if (ex->origin_form && path_len > 0 && path[0] == '/') {
        if (ensure_out(ex, path_len) < 0) return fail(ex, 500, "internal", "out of memory");
        norm_ok = path_normalize(path, path_len, ex->out, &norm_len) == 0;
    }
    ex->route = router_match(cfg, ex->host, ex->port, norm_ok ? ex->out : path,
                             norm_ok ? norm_len : path_len, ex->origin_form);
    if (ex->route && ex->route->path_prefix) {
        if (!norm_ok)
            return fail(ex, 400, "bad_request",
                        "the path climbs above /, or holds an encoded slash or a backslash");
        memcpy((char *)path, ex->out, norm_len);
        ex->path_len = (uint32_t)norm_len;
        path_len = norm_len;
    }
    if (!ex->route) {
        snprintf(d, sizeof d, "no route for %s%.*s", ex->host[0] ? ex->host : "(no host) ",
                 (int)(path_len > 64 ? 64 : path_len), path);
        return fail(ex, 403, "no_route", d);
    }
    const struct route_config *r = ex->route;
    if (r->has_upstream) {
        ex->up_tls = r->upstream.tls;
        ex->up_host = r->upstream.host;
        ex->up_port = r->upstream.port;
    } else {
        ex->up_tls = r->provider >= 0;
        ex->up_host = ex->host;
        ex->up_port = ex->port == 80 ? (ex->up_tls ? 443 : 80) : ex->port;
        if (!ex->host[0]) return fail(ex, 400, "bad_request", "the request names no host");
    }

    if (r->provider >= 0 && !(r->client_authorization == CLIENT_AUTHZ_KEEP && hd->auth_idx >= 0)) {
        ex->use_token = true;
        ex->tw.cb = on_token;
        ex->state = EX_TOKEN;
        if (token_get(ex->loop, cfg, r->provider, &ex->tw, &ex->tok) == 0) return;
        ex->state = EX_HEAD;
        if (ex->tok.status) {
            client_error(c, ex->tok.status, ex->tok.error, ex->tok.detail, provider_name(ex),
                         ex->tok.retry_after_s);
            return;
        }
    }
    connect_upstream(ex, false);
}

static void connect_upstream(struct exchange *ex, bool fresh)
{
    ex->state = EX_CONNECT;
    struct upconn *up = NULL;
    int r =
        upstream_acquire(ex->loop, ex->up_tls, ex->up_host, ex->up_port, fresh, &up_ops, ex, &up);
    if (r < 0) return fail_upstream(ex, UP_UNAVAILABLE);
    ex->up = up;
    if (r == 1) up_ready(ex, up, UP_OK);
}

/* Authority for the upstream's Host header. */
static size_t put_authority(const struct exchange *ex, char *out)
{
    const struct route_config *r = ex->route;
    if (r->has_upstream) {
        size_t n = r->upstream.authority_len;
        memcpy(out, r->upstream.authority, n);
        return n;
    }
    bool v6 = strchr(ex->up_host, ':') != NULL;
    int def = ex->up_tls ? 443 : 80;
    if (ex->up_port == def) return (size_t)sprintf(out, v6 ? "[%s]" : "%s", ex->up_host);
    return (size_t)sprintf(out, v6 ? "[%s]:%d" : "%s:%d", ex->up_host, ex->up_port);
}

/* Frees the replay copy and gives its room back to the loop's budget. */
static void replay_free(struct exchange *ex)
{
    if (ex->replay) {
        free(ex->replay);
        ex->loop->replay_reserved -= ex->replay_cap;
    }
    ex->replay = NULL;
    ex->replay_len = ex->replay_cap = 0;
}

/* Keeps the request body bytes being sent (iov, data of them body bytes, the rest chunk
 * framing) for a 401 replay, or for a retry of an idempotent request on a fresh connection when
 * a pooled one turns out closed: while the body stays within limits.retry_buffer_bytes and the
 * copies of all requests within limits.retry_buffer_total_bytes. Past either the request
 * streams on without a copy (its 401 goes to the client). */
static void replay_keep(struct exchange *ex, const uv_buf_t *iov, unsigned n, uint32_t data)
{
    bool retry = !ex->retried && ex->up && ex->up->reused && idempotent(ex->method);
    size_t bytes = iov_len(iov, n);
    if ((!ex->use_token && !retry) || ex->replay_overflow || ex->resp_started || bytes == 0) return;
    const struct limits *lim = &ex->cfg->limits;
    uint64_t want = ex->replay_len + bytes;
    /* too large: the copy goes after the write in progress (replay_drop_overflowed), which
     * may be resending it */
    if (ex->replay_body + data > (uint64_t)lim->retry_buffer_bytes || want > UINT32_MAX / 2)
        goto overflow; /* (with its framing a copy stays within an iovec's length) */
    if (want > ex->replay_cap) {
        uint64_t cap = ex->replay_cap ? ex->replay_cap : 4096;
        while (cap < want)
            cap *= 2;
        struct loop *l = ex->loop;
        if (l->replay_reserved - ex->replay_cap + cap > (uint64_t)lim->retry_buffer_total_bytes)
            goto overflow; /* the budget is spent */
        char *b = realloc(ex->replay, cap);
        if (!b) goto overflow;
        l->replay_reserved += cap - ex->replay_cap;
        ex->replay = b;
        ex->replay_cap = cap;
    }
    iov_copy(iov, n, 0, ex->replay + ex->replay_len);
    ex->replay_len = want;
    ex->replay_body += data;
    return;
overflow:
    ex->replay_overflow = true;
}

/* After a write: a replay copy that can no longer serve (the body outgrew it) is freed. */
static void replay_drop_overflowed(struct exchange *ex)
{
    if (ex->replay_overflow) replay_free(ex);
}

/* Appends to iov the request body bytes parsed and not yet sent, [fwd, dw) of the client's
 * buffer: as they are, or for a chunked request as one chunk of them and, once the request is
 * complete, the last chunk (extensions and trailers never travel). Returns the iovecs added
 * (at most 4); *data gets the body bytes among them. */
static unsigned body_iov(struct exchange *ex, uv_buf_t *iov, uint32_t *data)
{
    struct client *c = ex->c;
    uint32_t len = c->dw - c->fwd;
    unsigned n = 0;
    *data = len;
    if (!ex->req_chunked) {
        if (len) iov[n++] = uv_buf_init(c->in.base + c->fwd, len);
        return n;
    }
    if (len) {
        int k = snprintf(ex->chunk_line, sizeof ex->chunk_line, "%x\r\n", len);
        iov[n++] = uv_buf_init(ex->chunk_line, (unsigned)k);
        iov[n++] = uv_buf_init(c->in.base + c->fwd, len);
        iov[n++] = uv_buf_init("\r\n", 2);
    }
    if (ex->req_complete && !ex->req_last_chunk) {
        iov[n++] = uv_buf_init("0\r\n\r\n", 5);
        ex->req_last_chunk = true;
    }
    return n;
}

static int save_head(struct exchange *ex, const uv_buf_t *iov, unsigned n)
{
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += iov[i].len;
    if (total > ex->saved_cap) {
        char *b = malloc(total);
        if (!b) return -1;
        free(ex->saved);
        ex->saved = b;
        ex->saved_cap = (uint32_t)total;
    }
    size_t k = 0;
    for (unsigned i = 0; i < n; i++) {
        memcpy(ex->saved + k, iov[i].base, iov[i].len);
        k += iov[i].len;
    }
    ex->saved_len = (uint32_t)total;
    ex->head_saved = true;
    return 0;
}

/* The upstream request head: a rebuilt request line, the client's header lines that survive
 * (as runs of raw bytes from the client's buffer), then Host, Via and the token. It is saved
 * without the token; a replay or retry sends the saved head with the current token (and, for a
 * replay, the kept body). */
static int send_head(struct exchange *ex)
{
    struct client *c = ex->c;
    uv_buf_t iov[REQ_IOV_MAX];
    unsigned n = 0;
    if (ex->head_saved) {
        iov[n++] = uv_buf_init(ex->saved, ex->saved_len);
    } else {
        struct head *hd = &ex->req;
        const struct route_config *r = ex->route;
        const char *path = hd->base + ex->path_off;
        size_t path_len = ex->path_len;
        if (r->strip_prefix && ex->origin_form) {
            size_t s = router_strip_len(r, path, path_len);
            path += s;
            path_len -= s;
        }
        const char *base = r->has_upstream ? r->upstream.path : "";
        size_t base_len = r->has_upstream ? r->upstream.path_len : 0;
        const char *method = llhttp_method_name((llhttp_method_t)ex->method);
        /* kept header lines go out as slices of the client's buffer, one per run of adjacent
         * lines; a head with more runs than iovecs is copied into out instead */
        int runs = 0;
        uint32_t prev_end = 0;
        for (int i = 0; i < hd->n; i++) {
            const struct hdr *h = &hd->h[i];
            if (h->hop || (h->kind == H_AUTHORIZATION && ex->use_token)) continue;
            if (!prev_end || prev_end != h->name_off) runs++;
            prev_end = h->line_end;
        }
        bool copy = runs > REQ_IOV_MAX - 10; /* the line, then 9 at most after the runs */
        size_t method_len = strlen(method);
        size_t need = method_len + base_len + path_len + 16 + AUTHORITY_MAX + 32 +
                      ex->cfg->via_len + 16 + (copy ? hd->end - hd->start : 0);
        if (ensure_out(ex, need) < 0) return -1;
        char *o = ex->out;
        size_t k = put(o, method, method_len);
        o[k++] = ' ';
        memcpy(o + k, base, base_len);
        k += base_len;
        if (path_len == 0 || path[0] != '/') o[k++] = '/';
        if (path_len == 1 && path[0] == '*') path_len = 0;
        memcpy(o + k, path, path_len);
        k += path_len;
        memcpy(o + k, " HTTP/1.1\r\n", 11);
        k += 11;
        iov[n++] = uv_buf_init(o, (unsigned)k);

        uint32_t run_start = 0, run_end = 0;
        for (int i = 0; i < hd->n; i++) {
            const struct hdr *h = &hd->h[i];
            if (h->hop || (h->kind == H_AUTHORIZATION && ex->use_token)) continue;
            if (copy) {
                k += put(o + k, hd->base + h->name_off, h->line_end - h->name_off);
                continue;
            }
            if (run_end && run_end == h->name_off) {
                run_end = h->line_end;
                continue;
            }
            if (run_end) iov[n++] = uv_buf_init((char *)hd->base + run_start, run_end - run_start);
            run_start = h->name_off;
            run_end = h->line_end;
        }
        if (copy) iov[0].len = (unsigned)k; /* the request line and the copied lines */
        if (run_end) iov[n++] = uv_buf_init((char *)hd->base + run_start, run_end - run_start);

        char *t = o + k;
        size_t tl = 0;
        memcpy(t, "Host: ", 6);
        tl += 6;
        tl += put_authority(ex, t + tl);
        tl += PUT_LIT(t + tl, "\r\nVia: 1.1 ");
        tl += put(t + tl, ex->cfg->via, ex->cfg->via_len);
        tl += PUT_LIT(t + tl, "\r\n");
        iov[n++] = uv_buf_init(t, (unsigned)tl);
        if (save_head(ex, iov, n) < 0) return -1;
    }
    if (ex->use_token && ex->tok.token)
        iov[n++] = uv_buf_init(ex->tok.token->header, (unsigned)ex->tok.token->header_len);
    iov[n++] = uv_buf_init("\r\n", 2);
    /* a replay or retry sends again what the first try sent; body bytes parsed since ride
     * along and are kept first, so the replay buffer has stopped moving (replay_keep may
     * realloc it) before an iovec points into it */
    uint64_t resend = ex->replayed || ex->retried ? ex->replay_len : 0;
    uv_buf_t body[4];
    uint32_t data;
    unsigned nb = body_iov(ex, body, &data);
    replay_keep(ex, body, nb, data);
    if (resend) iov[n++] = uv_buf_init(ex->replay, (unsigned)resend);
    for (unsigned i = 0; i < nb; i++)
        iov[n++] = body[i];
    client_body_forwarded(c);
    ex->head_sent = true;
    int w = upconn_write(ex->up, iov, n, true); /* what the socket does not take is copied */
    replay_drop_overflowed(ex);
    if (w < 0) return -1;
    ex->up_write_pending = w == 1;
    return 0;
}

static llhttp_settings_t response_settings;

/* A try failed before the response started (ex->up is gone). One that went out on a reused,
 * pooled connection which turned out closed is made once more on a fresh connection when the
 * request is idempotent and its body, if any, is all in the replay buffer (replay_keep keeps
 * every byte sent on a reused connection unless it overflows). True when the retry started. */
static bool retry_fresh(struct exchange *ex, bool reused, int err)
{
    bool had_bytes = ex->resp.n > 0 || ex->resp_head_ready || ex->resp_started;
    bool body_kept = !ex->has_body || !ex->replay_overflow;
    if (err == UP_TIMEOUT || !reused || had_bytes || ex->retried || !body_kept ||
        !idempotent(ex->method))
        return false;
    ex->retried = true;
    ex->head_sent = false;
    ex->up_write_pending = false;
    log_debug("upstream %s:%d: pooled connection was closed, retrying", ex->up_host, ex->up_port);
    connect_upstream(ex, true);
    return true;
}

/* Writing to the upstream failed before the response started. */
static void up_write_failed(struct exchange *ex)
{
    bool reused = ex->up->reused;
    upconn_close(ex->up);
    ex->up = NULL;
    if (!retry_fresh(ex, reused, UP_UNAVAILABLE)) fail_upstream(ex, UP_UNAVAILABLE);
}

static void up_ready(void *arg, struct upconn *up, int err)
{
    struct exchange *ex = arg;
    if (err) {
        ex->up = NULL;
        return fail_upstream(ex, err);
    }
    ex->up = up;
    ex->state = EX_SEND;
    llhttp_init(&ex->rp, HTTP_RESPONSE, &response_settings);
    ex->rp.data = &ex->resp;
    head_reset(&ex->resp, 0);
    ex->resp_mark = 0;
    if (send_head(ex) < 0) return up_write_failed(ex);
    upconn_timeout(up, true);
    upconn_read(up, true);
    if (!ex->up_write_pending && ex->has_body) client_body_taken(ex->c);
}

void proxy_client_data(struct exchange *ex)
{
    struct client *c = ex->c;
    if (ex->state != EX_SEND || !ex->head_sent || ex->up_write_pending || !ex->up) {
        return;
    }
    uv_buf_t b[4];
    uint32_t data;
    unsigned nb = body_iov(ex, b, &data);
    if (nb) {
        replay_keep(ex, b, nb, data);
        client_body_forwarded(c);
        int w = upconn_write(ex->up, b, nb, false);
        replay_drop_overflowed(ex);
        if (w < 0) {
            if (ex->resp_started) return client_abort(c);
            return up_write_failed(ex);
        }
        if (w == 1) {
            ex->up_write_pending = true;
            return;
        }
        client_body_taken(c); /* may parse more and call us again */
        return;
    }
    maybe_finish(ex);
}

static void up_pending(void *arg, struct upconn *up)
{
    struct exchange *ex = arg;
    (void)up;
    ex->up_write_pending = true;
}

static void up_drained(void *arg, struct upconn *up)
{
    struct exchange *ex = arg;
    (void)up;
    ex->up_write_pending = false;
    if (ex->has_body)
        client_body_taken(ex->c);
    else
        maybe_finish(ex);
}

/* ---- response ---- */

static struct exchange *ex_of_resp(llhttp_t *p)
{
    return container_of((struct head *)p->data, struct exchange, resp);
}

static int resp_on_message_begin(llhttp_t *p)
{
    struct exchange *ex = ex_of_resp(p);
    head_reset(&ex->resp, ex->resp_mark);
    return 0;
}

static int resp_on_headers_complete(llhttp_t *p)
{
    struct exchange *ex = ex_of_resp(p);
    ex->resp_head_ready = true;
    int status = llhttp_get_status_code(p);
    if (status >= 100 && status < 200) return 1; /* interim: never a body; paused once complete */
    if (ex->method == HTTP_HEAD || status == 204 || status == 304) {
        return 1; /* no body follows, whatever the headers say */
    }
    ex->resp_close_delimited = llhttp_message_needs_eof(p);
    ex->resp_dechunk = ex->http_minor == 0 && (p->flags & F_CHUNKED);
    return HPE_PAUSED;
}

static int resp_on_body(llhttp_t *p, const char *at, size_t len)
{
    struct exchange *ex = ex_of_resp(p);
    if (ex->resp_dechunk) {
        char *dst = (char *)ex->resp.base + ex->resp_w;
        if (dst != at) memmove(dst, at, len);
        ex->resp_w += (uint32_t)len;
    }
    return 0;
}

static int resp_on_message_complete(llhttp_t *p)
{
    struct exchange *ex = ex_of_resp(p);
    int status = llhttp_get_status_code(p);
    if (status >= 100 && status < 200) return HPE_PAUSED; /* relay it before the next one */
    ex->resp_done = true;
    return HPE_PAUSED;
}

static llhttp_settings_t response_settings = {
    .on_message_begin = resp_on_message_begin,
    .on_status = head_on_status,
    .on_header_field = head_on_header_field,
    .on_header_value = head_on_header_value,
    .on_headers_complete = resp_on_headers_complete,
    .on_body = resp_on_body,
    .on_message_complete = resp_on_message_complete,
};

static bool client_closes_after(const struct exchange *ex)
{
    return !ex->client_keep_alive || ex->resp_close_delimited || ex->resp_dechunk ||
           ex->loop->draining || !ex->req_complete;
}

/* A Location or Content-Location value from a gateway route's upstream, in the client's view
 * (nginx's proxy_redirect default): an absolute URI on the route's upstream, or an absolute
 * path, has the upstream's base path replaced by the route's prefix (when stripped), and the
 * URI the client's host. Writes the value to o and returns its length; 0: keep the line as
 * it came (it points elsewhere, or the route is not a gateway). o has room for the value plus
 * the prefix and an authority. */
static size_t location_rewrite(const struct exchange *ex, const char *v, size_t vl, char *o)
{
    const struct route_config *r = ex->route;
    if (!r->path_prefix || !r->has_upstream) return 0;
    const struct upstream_url *u = &r->upstream;
    const char *scheme = u->tls ? "https://" : "http://";
    size_t sl = strlen(scheme), al = u->authority_len;
    bool absolute = false;
    if (vl >= sl + al && ascii_ieq(v, scheme, sl) && ascii_ieq(v + sl, u->authority, al) &&
        (vl == sl + al || v[sl + al] == '/' || v[sl + al] == '?')) {
        v += sl + al;
        vl -= sl + al;
        absolute = true;
    } else if (!(vl >= 1 && v[0] == '/' && (vl == 1 || v[1] != '/'))) {
        return 0; /* relative references resolve against the client's own URL as they are */
    }
    if (vl < u->path_len || memcmp(v, u->path, u->path_len) != 0 ||
        (vl > u->path_len && v[u->path_len] != '/' && v[u->path_len] != '?'))
        return 0; /* elsewhere on the upstream */
    v += u->path_len;
    vl -= u->path_len;
    size_t k = 0;
    if (absolute && ex->host[0]) { /* the client asked http://<host>: it gets that back */
        bool v6 = strchr(ex->host, ':') != NULL;
        k = (size_t)sprintf(o, v6 ? "http://[%s]" : "http://%s", ex->host);
        if (ex->port != 80) k += (size_t)sprintf(o + k, ":%d", ex->port);
    }
    size_t keep = r->strip_prefix ? router_strip_len(r, r->path_prefix, r->prefix_len) : 0;
    memcpy(o + k, r->path_prefix, keep);
    k += keep;
    if (vl == 0 || v[0] != '/') o[k++] = '/';
    memcpy(o + k, v, vl);
    return k + vl;
}

/* Builds the client's response head into ex->out. Returns its length or -1. */
static int build_resp_head(struct exchange *ex, bool interim)
{
    struct head *hd = &ex->resp;
    int status = llhttp_get_status_code(&ex->rp);
    if (status < 100 || status > 599 || head_analyze(hd) != HEAD_OK) return -1;
    for (uint32_t i = 0; i < hd->line_len; i++) { /* reason-phrase: HTAB, SP, VCHAR, obs-text */
        unsigned char ch = (unsigned char)hd->base[hd->line_off + i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return -1;
    }
    size_t need = 32 + hd->line_len + (hd->end - hd->start) + ex->cfg->via_len + 64;
    size_t loc_extra = ex->route->prefix_len + AUTHORITY_MAX + 32; /* per Location rewritten */
    for (int i = 0; i < hd->n; i++)
        if (hd->h[i].kind == H_LOCATION || hd->h[i].kind == H_CONTENT_LOCATION) need += loc_extra;
    if (ensure_out(ex, need) < 0) return -1;
    char *o = ex->out;
    size_t k = PUT_LIT(o, "HTTP/1.1 ");
    o[k++] = (char)('0' + status / 100 % 10);
    o[k++] = (char)('0' + status / 10 % 10);
    o[k++] = (char)('0' + status % 10);
    o[k++] = ' ';
    memcpy(o + k, hd->base + hd->line_off, hd->line_len);
    k += hd->line_len;
    memcpy(o + k, "\r\n", 2);
    k += 2;
    for (int i = 0; i < hd->n; i++) {
        const struct hdr *h = &hd->h[i];
        if (h->hop) continue;
        if (ex->resp_dechunk && h->kind == H_TRANSFER_ENCODING) continue;
        if (interim && (h->kind == H_TRANSFER_ENCODING || h->kind == H_CONTENT_LENGTH)) continue;
        if (h->kind == H_LOCATION || h->kind == H_CONTENT_LOCATION) {
            size_t at = k + h->name_len + 2;
            size_t vl = location_rewrite(ex, hdr_value(hd, h), h->val_len, o + at);
            if (vl) {
                memcpy(o + k, hdr_name(hd, h), h->name_len);
                memcpy(o + k + h->name_len, ": ", 2);
                k = at + vl;
                memcpy(o + k, "\r\n", 2);
                k += 2;
                continue;
            }
        }
        uint32_t len = h->line_end - h->name_off;
        memcpy(o + k, hd->base + h->name_off, len);
        k += len;
    }
    if (interim) { /* 1xx: no body, no framing, no connection management */
        memcpy(o + k, "\r\n", 2);
        return (int)(k + 2);
    }
    k += PUT_LIT(o + k, "Via: 1.1 ");
    k += put(o + k, ex->cfg->via, ex->cfg->via_len);
    k += PUT_LIT(o + k, "\r\n");
    if (client_closes_after(ex))
        k += PUT_LIT(o + k, "Connection: close\r\n");
    else if (ex->http_minor == 0)
        k += PUT_LIT(o + k, "Connection: keep-alive\r\n");
    memcpy(o + k, "\r\n", 2);
    return (int)(k + 2);
}

static void resp_fail(struct exchange *ex, int err)
{
    if (ex->up) {
        upconn_close(ex->up);
        ex->up = NULL;
    }
    if (ex->head_out) { /* the head was never written: the client can still get a 502 */
        ex->head_out = 0;
        ex->resp_started = false;
    }
    if (ex->resp_started) return client_abort(ex->c);
    fail_upstream(ex, err);
}

/* Writes [from, to) of the upstream buffer (plus an optional head) to the client. Returns
 * 0 done, 1 pending, -1 error. */
static int relay(struct exchange *ex, const char *head, size_t head_len, uint32_t from, uint32_t to)
{
    uv_buf_t b[2];
    unsigned n = 0;
    if (head_len) b[n++] = uv_buf_init((char *)head, (unsigned)head_len);
    if (to > from && ex->up) b[n++] = uv_buf_init(ex->up->in.base + from, to - from);
    if (n == 0) return 0;
    int w = client_write(ex->c, b, n, head_len > 0);
    if (w == 1) proxy_client_pending(ex);
    return w;
}

void proxy_client_pending(struct exchange *ex)
{
    ex->client_write_pending = true;
    if (ex->up) { /* backpressure: the upstream waits, and so does its timer */
        upconn_read(ex->up, false);
        upconn_timeout(ex->up, false);
    }
}

/* The upstream refused the token: forget it (if still cached), get a fresh one (single flight)
 * and send the request again, once. The 401's connection is not reused. */
static void replay_401(struct exchange *ex)
{
    struct loop *l = ex->loop;
    l->stats.retries_401++;
    log_info("upstream %s:%d answered 401 to a minted token: replaying with a fresh one",
             ex->up_host, ex->up_port);
    if (ex->tok.token) {
        token_invalidate(l, ex->tok.token);
        token_put(ex->tok.token);
        ex->tok.token = NULL;
    }
    upconn_close(ex->up);
    ex->up = NULL;
    ex->up_write_pending = false;
    ex->replayed = true;
    ex->head_sent = false;
    ex->resp_head_ready = ex->resp_done = ex->resp_close_delimited = false;
    ex->resp_dechunk = ex->resp_kick = false;
    ex->tw.cb = on_token;
    ex->state = EX_TOKEN;
    if (token_get(l, ex->cfg, ex->route->provider, &ex->tw, &ex->tok) == 0) return;
    ex->state = EX_HEAD;
    if (ex->tok.status) {
        client_error(ex->c, ex->tok.status, ex->tok.error, ex->tok.detail, provider_name(ex),
                     ex->tok.retry_after_s);
        return;
    }
    connect_upstream(ex, false);
}

static void resp_process(struct exchange *ex)
{
    while (ex->up && !ex->client_write_pending && !ex->resp_done) {
        struct inbuf *in = &ex->up->in;
        if (in->off == in->len) {
            if (ex->resp_started) in->off = in->len = 0; /* a head in progress stays */
            if (!ex->resp_kick) break;
        }
        ex->resp_kick = false; /* a bodyless message completes on an empty execute */
        if (!in->base && inbuf_ensure(in, &ex->loop->pool) < 0) /* llhttp wants a pointer */
            return resp_fail(ex, UP_UNAVAILABLE);
        ex->resp.base = in->base;
        uint32_t from = in->off;
        ex->resp_w = from;
        enum llhttp_errno e = llhttp_execute(&ex->rp, in->base + from, in->len - from);
        uint32_t pos = e == HPE_OK ? in->len : (uint32_t)(llhttp_get_error_pos(&ex->rp) - in->base);
        if (e != HPE_OK && e != HPE_PAUSED) {
            log_info("upstream %s:%d: invalid response: %s", ex->up_host, ex->up_port,
                     llhttp_errno_name(e));
            return resp_fail(ex, UP_UNAVAILABLE);
        }
        if (!ex->resp_started) {
            in->off = pos;
            if (!ex->resp_head_ready) { /* head incomplete */
                if (in->len == in->cap) {
                    uint32_t lim = (uint32_t)ex->cfg->limits.max_header_bytes + REQUEST_LINE_MAX;
                    if (in->cap >= lim || inbuf_grow(in, &ex->loop->pool, lim) < 0)
                        return resp_fail(ex, UP_UNAVAILABLE);
                }
                continue;
            }
            ex->resp.end = pos;
            int status = llhttp_get_status_code(&ex->rp);
            if (status >= 100 && status < 200) {
                ex->resp_head_ready = false;
                ex->resp_mark = pos;
                llhttp_resume(&ex->rp);
                ex->resp_kick = true;
                if (status == 101) continue;       /* never passed on: no upgrades */
                if (ex->http_minor == 0) continue; /* HTTP/1.0 clients get no 1xx (RFC 9110 15.2) */
                int hl = build_resp_head(ex, true);
                if (hl < 0) return resp_fail(ex, UP_UNAVAILABLE);
                if (relay(ex, ex->out, (size_t)hl, 0, 0) < 0) return client_abort(ex->c);
                continue;
            }
            if (status == 401 && ex->use_token && !ex->replayed && !ex->replay_overflow)
                return replay_401(ex);
            int hl = build_resp_head(ex, false);
            if (hl < 0) return resp_fail(ex, UP_UNAVAILABLE);
            ex->resp_started = true;
            replay_free(ex); /* nothing is sent again once the response has started */
            if (e == HPE_PAUSED && !ex->resp_done) {
                llhttp_resume(&ex->rp);
                ex->resp_kick = true;
            }
            ex->resp_mark = pos;
            ex->head_out = (uint32_t)hl; /* written together with the first body bytes */
            continue;
        }
        /* body */
        uint32_t to = ex->resp_dechunk ? ex->resp_w : pos;
        in->off = pos;
        int w = relay(ex, ex->out, ex->head_out, from, to);
        ex->head_out = 0;
        if (w < 0) {
            if (ex->up) {
                upconn_close(ex->up);
                ex->up = NULL;
            }
            return client_abort(ex->c);
        }
        if (e == HPE_PAUSED && !ex->resp_done) llhttp_resume(&ex->rp);
    }
    if (ex->head_out && !ex->client_write_pending) { /* no body bytes came with the head */
        int w = relay(ex, ex->out, ex->head_out, 0, 0);
        ex->head_out = 0;
        if (w < 0) return client_abort(ex->c);
    }
    if (ex->up && ex->resp_started && !ex->resp_done && ex->up->in.off == ex->up->in.len)
        inbuf_free(&ex->up->in, &ex->loop->pool); /* all relayed: the next read borrows */
    if (ex->up || ex->resp_done) maybe_finish(ex);
}

static void up_data(void *arg, struct upconn *up)
{
    struct exchange *ex = arg;
    (void)up;
    if (ex->client_write_pending) {
        upconn_read(up, false);
        return;
    }
    resp_process(ex);
}

void proxy_client_drained(struct exchange *ex)
{
    ex->client_write_pending = false;
    if (ex->up) {
        struct inbuf *in = &ex->up->in;
        if (in->off == in->len) in->off = in->len = 0;
        if (!ex->resp_done) {
            upconn_read(ex->up, true);
            upconn_timeout(ex->up, true);
        }
        resp_process(ex);
        return;
    }
    maybe_finish(ex);
}

static void up_closed(void *arg, struct upconn *up, int err)
{
    struct exchange *ex = arg;
    ex->up = NULL;
    if (!ex->resp_started) {
        if (err == 0) err = UP_UNAVAILABLE;
        if (!retry_fresh(ex, up->reused, err)) fail_upstream(ex, err);
        return;
    }
    if (err == 0 && !ex->resp_done) {
        /* EOF: completes a close-delimited body, cuts any other */
        enum llhttp_errno e = llhttp_finish(&ex->rp);
        if ((e == HPE_OK || e == HPE_PAUSED) && ex->resp_done) {
            maybe_finish(ex);
            return;
        }
    }
    if (ex->resp_done) {
        maybe_finish(ex);
        return;
    }
    ex->client_write_pending = ex->c->write_pending;
    client_abort(ex->c);
}

static void maybe_finish(struct exchange *ex)
{
    if (!ex->resp_done || ex->client_write_pending || ex->up_write_pending) return;
    struct client *c = ex->c;
    struct loop *l = ex->loop;
    bool keep = !client_closes_after(ex) && ex->req_complete;
    if (ex->up) {
        struct inbuf *in = &ex->up->in;
        bool reusable = ex->req_complete && !ex->resp_close_delimited &&
                        llhttp_should_keep_alive(&ex->rp) && in->off == in->len;
        if (reusable) {
            upconn_release(ex->up);
        } else {
            upconn_close(ex->up);
        }
        ex->up = NULL;
    }
    proxy_count(l, ex, llhttp_get_status_code(&ex->rp));
    double secs = (double)(uv_now(&l->uv) - ex->t_start) / 1000.0;
    l->stats.latency_count++;
    l->stats.latency_sum_s += secs;
    for (int i = 0; i < LATENCY_BUCKETS; i++)
        if (secs <= stats_latency_bounds[i]) {
            l->stats.latency_le[i]++;
            break;
        }
    ex->state = EX_DONE;
    client_exchange_done(c, keep);
}
