/* server.c - listeners and client connections (see server.h).
 *
 * Memory: struct client is calloc'd at accept, freed in the close callback of its last handle;
 * its exchange goes back to the loop's free list when the request ends or the client goes.
 *
 * While something is pending on a client: a queued write owns a copy of its bytes and libuv
 * ends it (UV_ECANCELED) before the close callback frees the client; a shutdown request is
 * malloc'd and freed in its own callback, touching nothing else; a batched read waiting for
 * the end of the iteration is cancelled before uv_close (sock_flush). */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "log.h"
#include "loop.h"
#include "proxy.h"
#include "sock.h"

#define LISTEN_BACKLOG 1024
#define ERROR_BODY_MAX 1024

static void client_process(struct client *c);
static void client_close(struct client *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* ---- llhttp request callbacks ---- */

static int on_headers_complete(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED;
}

static int on_message_complete(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED;
}

#define CHUNK_EXT_MAX                                                                              \
    (4096 - 32) /* extensions of one chunk-size line: beyond, the line is over                     \
                 * SPEC's 4 KiB: 400 */

static struct exchange *ex_of_req(llhttp_t *p)
{
    return container_of((struct head *)p->data, struct exchange, req);
}

/* A chunked request body is forwarded as its data alone, reframed (proxy.c): each piece moves
 * down to the client's dw, so [fwd, dw) holds the data parsed and not yet sent. */
static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct exchange *ex = ex_of_req(p);
    if (!ex->req_chunked) return 0;
    struct client *c = ex->c;
    char *dst = c->in.base + c->dw;
    if (dst != at) memmove(dst, at, len);
    c->dw += (uint32_t)len;
    return 0;
}

/* Chunk extensions are dropped; their length is bounded. */
static int on_chunk_extension(llhttp_t *p, const char *at, size_t len)
{
    (void)at;
    struct exchange *ex = ex_of_req(p);
    ex->chunk_ext += (uint32_t)len;
    return ex->chunk_ext > CHUNK_EXT_MAX ? -1 : 0;
}

static int on_chunk_header(llhttp_t *p)
{
    ex_of_req(p)->chunk_ext = 0;
    return 0;
}

static llhttp_settings_t request_settings = {
    .on_url = head_on_url,
    .on_header_field = head_on_header_field,
    .on_header_value = head_on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_chunk_extension_name = on_chunk_extension,
    .on_chunk_extension_value = on_chunk_extension,
    .on_chunk_header = on_chunk_header,
    .on_message_complete = on_message_complete,
};

/* ---- timeouts (timeouts.h) ---- */

static void timer_set(struct client *c, int kind)
{
    timeout_set(c->loop, &c->to, kind);
}

static void tlist_clear(struct client *c)
{
    timeout_clear(c->loop, &c->to);
}

static void on_timeout(struct tnode *n)
{
    struct client *c = container_of(n, struct client, to);
    switch (c->state) {
    case C_HEAD:
        if (c->ex)
            client_error(c, 408, "request_timeout", "the request head was not received in time",
                         NULL, 0);
        else
            client_close(c);
        break;
    case C_CLOSING:
        client_close(c);
        break;
    default:
        break;
    }
}

/* A client that accepts none of a response for idle_timeout_ms (nginx's send_timeout) is cut:
 * it would hold its upstream connection forever. */
static void on_send_timeout(struct tnode *n)
{
    struct client *c = container_of(n, struct client, to);
    log_debug("client took no response bytes for %lld ms: closing",
              (long long)c->loop->cfg->limits.idle_timeout_ms);
    client_close(c);
}

void server_timers_init(struct loop *l)
{
    l->to.fire[TO_HEADER] = l->to.fire[TO_IDLE] = l->to.fire[TO_LINGER] = on_timeout;
    l->to.fire[TO_SEND] = on_send_timeout;
}

/* ---- reading ---- */

static void read_stop(struct client *c)
{
    uv_read_stop((uv_stream_t *)&c->tcp);
    sock_recv_cancel(&c->loop->out, (uv_stream_t *)&c->tcp);
    c->reading = false;
}

static void read_update(struct client *c)
{
    bool want = c->state != C_CLOSED && !c->eof &&
                (c->state == C_CLOSING || !c->in.base || c->in.len < c->in.cap);
    if (want && !c->reading) {
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        c->reading = true;
    } else if (!want && c->reading) {
        read_stop(c);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct client *c = h->data;
    if (c->state == C_CLOSING) {
        buf->base = c->loop->scratch;
        buf->len = BUF_BLOCK;
        return;
    }
    buf->base = NULL; /* readiness only: on_read receives itself (sock.h) */
    buf->len = 0;
}

/* nread as sock_recv gives it: bytes received are already in c->in. */
static void read_done(struct client *c, ssize_t nread)
{
    if (c->state == C_CLOSED) return;
    if (nread == 0) return;
    if (nread == UV_ENOBUFS) {
        read_stop(c);
        return;
    }
    if (nread < 0) {
        c->eof = true;
        read_stop(c);
        /* A client that half-closes after a complete request still gets its answer. */
        if (nread == UV_EOF && c->state == C_DONE) return;
        client_close(c);
        return;
    }
    if (c->state == C_CLOSING) { /* lingering: discard (a batched read went to c->in) */
        inbuf_free(&c->in, &c->loop->pool);
        return;
    }
    client_process(c);
    /* a head still incomplete after this read must finish in time (a complete one never
     * needed the timer: the common case costs no timer work) */
    if (c->state == C_HEAD && c->ex && c->to.kind != TO_HEADER) timer_set(c, TO_HEADER);
}

static void on_received(uv_stream_t *s, ssize_t nread)
{
    struct client *c = s->data;
    read_done(c, nread);
    inbuf_settle(&c->in, &c->loop->pool);    /* what is still held becomes the client's own */
    if (c->ex) c->ex->req.base = c->in.base; /* the head is parsed in place: follow a copy */
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct client *c = s->data;
    (void)buf;
    if (nread == UV_ENOBUFS && c->state < C_CLOSING) {
        if (sock_recv_later(&c->loop->out, s, &c->in, on_received)) return;
        nread = sock_recv(s, &c->in, &c->loop->pool);
    }
    on_received(s, nread);
}

/* ---- parsing ---- */

static int head_limit(const struct client *c)
{
    return (int)c->loop->cfg->limits.max_header_bytes + REQUEST_LINE_MAX;
}

static void head_failed(struct client *c, enum llhttp_errno e)
{
    struct head *hd = &c->ex->req;
    if (hd->error == HEAD_TOO_MANY)
        client_error(c, 431, "headers_too_large", "the request has too many headers", NULL, 0);
    else if (hd->error == HEAD_URI_TOO_LONG)
        client_error(c, 414, "uri_too_long", "the request line is longer than 8 KiB", NULL, 0);
    else {
        char d[160];
        snprintf(d, sizeof d, "malformed request: %s", llhttp_errno_name(e));
        client_error(c, 400, "bad_request", d, NULL, 0);
    }
}

static void parse_head(struct client *c)
{
    if (c->in.off == c->in.len) return;
    if (!c->ex) {
        c->ex = proxy_exchange_new(c->loop, c);
        if (!c->ex) {
            client_close(c);
            return;
        }
        llhttp_init(&c->ex->parser, HTTP_REQUEST, &request_settings);
        c->ex->parser.data = &c->ex->req;
        head_reset(&c->ex->req, c->in.off);
    }
    struct head *hd = &c->ex->req;
    hd->base = c->in.base;
    const char *start = c->in.base + c->in.off;
    enum llhttp_errno e = llhttp_execute(&c->ex->parser, start, c->in.len - c->in.off);
    if (e == HPE_OK) {
        c->in.off = c->in.len;
        uint32_t used = c->in.len - hd->start;
        if (used - hd->line_len > (uint32_t)c->loop->cfg->limits.max_header_bytes) {
            client_error(c, 431, "headers_too_large", "the request head is too large", NULL, 0);
            return;
        }
        if (c->in.len == c->in.cap) {
            uint32_t want = c->in.cap * 2;
            if (want > (uint32_t)head_limit(c) + 1024) want = (uint32_t)head_limit(c) + 1024;
            if (want <= c->in.cap || inbuf_grow(&c->in, &c->loop->pool, want) < 0) {
                if (hd->n == 0 && !hd->in_value && hd->line_len > 0 && hd->line_len > 4096)
                    client_error(c, 414, "uri_too_long", "the request line is longer than 8 KiB",
                                 NULL, 0);
                else
                    client_error(c, 431, "headers_too_large", "the request head is too large", NULL,
                                 0);
            }
        }
        return;
    }
    if (e != HPE_PAUSED) {
        head_failed(c, e);
        return;
    }
    c->in.off = (uint32_t)(llhttp_get_error_pos(&c->ex->parser) - c->in.base);
    llhttp_resume(&c->ex->parser);
    hd->end = c->in.off;
    if (hd->end - hd->start - hd->line_len > (uint32_t)c->loop->cfg->limits.max_header_bytes) {
        client_error(c, 431, "headers_too_large", "the request head is too large", NULL, 0);
        return;
    }
    tlist_clear(c);
    client_body_forwarded(c);
    c->state = C_BODY;
    if (c->admin)
        admin_request(c->ex);
    else
        proxy_request(c->ex);
    c->again = true;
}

static void parse_body(struct client *c)
{
    if (!c->ex) return;
    if (!c->in.base) { /* nothing held (it was all forwarded): nothing to parse; a body never */
        proxy_client_data(c->ex); /* completes on an empty execute, only a bodyless head does */
        return;
    }
    c->ex->req.base = c->in.base;
    const char *start = c->in.base + c->in.off;
    llhttp_t *p = &c->ex->parser;
    enum llhttp_errno e = llhttp_execute(p, start, c->in.len - c->in.off);
    if (e == HPE_OK) {
        c->in.off = c->in.len;
    } else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
        c->in.off = (uint32_t)(llhttp_get_error_pos(p) - c->in.base);
        llhttp_resume(p); /* the next request gets a parser of its own */
        c->state = C_DONE;
        c->ex->req_complete = true;
    } else {
        if (c->ex->resp_started) {
            client_abort(c);
            return;
        }
        if (c->ex->req.error == HEAD_TOO_MANY) {
            client_error(c, 431, "headers_too_large", "the request trailers are too large", NULL,
                         0);
            return;
        }
        char d[160];
        snprintf(d, sizeof d, "malformed request body: %s%s", llhttp_errno_name(e),
                 c->ex->chunk_ext > CHUNK_EXT_MAX ? " (a chunk-size line over 4 KiB)" : "");
        client_error(c, 400, "bad_request", d, NULL, 0);
        return;
    }
    if (!c->ex->req_chunked) {
        c->dw = c->in.off;
    } else if (c->dw < c->in.off) { /* framing parsed and dropped: its room is the input's */
        memmove(c->in.base + c->dw, c->in.base + c->in.off, c->in.len - c->in.off);
        c->in.len -= c->in.off - c->dw;
        c->in.off = c->dw;
    }
    proxy_client_data(c->ex);
}

/* Does the parser or the exchange still need bytes of the input buffer? */
static bool input_needed(const struct client *c)
{
    if (c->state >= C_CLOSING) return false;
    if (c->in.off < c->in.len) return true; /* not parsed yet: pipelined, or held back */
    if (!c->ex) return false;
    if (c->state == C_HEAD) return true; /* a head in progress is parsed in place */
    return c->fwd < c->in.off || proxy_reads_input(c->ex);
}

static void client_process(struct client *c)
{
    if (c->in_process) {
        c->again = true;
        return;
    }
    c->in_process = true;
    do {
        c->again = false;
        if (c->state == C_HEAD)
            parse_head(c);
        else if (c->state == C_BODY && (c->in.off < c->in.len || !c->ex->req_complete))
            parse_body(c);
    } while (c->again && (c->state == C_HEAD || c->state == C_BODY));
    c->in_process = false;
    if (c->state == C_CLOSED) return;
    if (c->in.base && !input_needed(c)) {
        inbuf_free(&c->in, &c->loop->pool);
        c->fwd = c->dw = 0;
    }
    read_update(c);
}

void client_body_taken(struct client *c)
{
    if (c->state == C_CLOSED) return;
    if (c->fwd == c->in.len && c->in.off == c->in.len) {
        c->in.len = c->in.off = c->fwd = c->dw = 0;
    } else if (c->fwd > 0 && c->fwd == c->in.off && c->in.cap - c->in.len < BUF_BLOCK / 4) {
        inbuf_shift(&c->in, c->fwd);
        c->fwd = c->dw = 0;
    }
    if (c->state == C_DONE && c->ex) { /* parsed whole: what is left of it, then the end */
        if (c->in.base && !input_needed(c)) {
            inbuf_free(&c->in, &c->loop->pool);
            c->fwd = c->dw = 0;
        }
        read_update(c);
        proxy_client_data(c->ex);
        return;
    }
    client_process(c);
}

/* ---- writing ---- */

static void shutdown_write(struct client *c);

static void on_written(uv_write_t *req, int status)
{
    struct client *c = sock_write_done(req);
    c->write_pending = false;
    if (c->to.kind == TO_SEND) tlist_clear(c);
    if (c->state == C_CLOSED) return;
    if (status < 0) {
        client_close(c);
        return;
    }
    if (c->state == C_CLOSING) {
        shutdown_write(c);
        return;
    }
    if (c->ex) proxy_client_drained(c->ex);
}

static void now_pending(struct client *c)
{
    c->write_pending = true;
    if (c->state == C_BODY || c->state == C_DONE) timer_set(c, TO_SEND);
}

/* A gathered write the socket did not take whole is queued now (sock.h): wait for it. */
static void gathered_pending(void *owner)
{
    struct client *c = owner;
    now_pending(c);
    if (c->ex) proxy_client_pending(c->ex);
}

/* Sends what this client has gathered before deciding between closing and lingering. */
static void flush_before_deciding(struct client *c)
{
    sock_flush(&c->loop->out, (uv_stream_t *)&c->tcp, true);
}

/* Writes now what the socket takes; the rest goes out later from a copy (sock.h).
 * 0: all written, 1: pending, -1: error. */
static int write_or_queue(struct client *c, const uv_buf_t *bufs, unsigned n, bool gather)
{
    struct sock_owner who = {c, on_written, gathered_pending};
    int w = sock_write((uv_stream_t *)&c->tcp, &c->loop->out, bufs, n, gather, &who);
    if (w == 1) now_pending(c);
    return w;
}

int client_write(struct client *c, const uv_buf_t *bufs, unsigned n, bool head)
{
    if (c->state == C_CLOSED || c->write_pending) return -1;
    return write_or_queue(c, bufs, n, head);
}

/* ---- ending ---- */

static void on_client_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    free(req);
}

static void shutdown_write(struct client *c)
{
    flush_before_deciding(c);
    if (c->write_pending) return; /* on_written shuts down after it */
    uv_shutdown_t *req = malloc(sizeof *req);
    if (req && uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) < 0) free(req);
}

static void accept_pending(struct loop *l);

static void client_close(struct client *c)
{
    if (c->state == C_CLOSED) return;
    c->state = C_CLOSED;
    if (c->ex) {
        proxy_exchange_free(c->ex);
        c->ex = NULL;
    }
    struct loop *l = c->loop;
    inbuf_free(&c->in, &l->pool);
    if (c->prev) c->prev->next = c->next;
    if (c->next) c->next->prev = c->prev;
    if (l->clients == c) l->clients = c->next;
    l->n_clients--;
    if (!c->admin) l->stats.open_connections--;
    tlist_clear(c);
    sock_flush(&l->out, (uv_stream_t *)&c->tcp, false);
    uv_close((uv_handle_t *)&c->tcp, on_client_closed);
    accept_pending(l);
}

static void linger(struct client *c);

/* The cut shows as the end of the stream after what was relayed (a short body, a chunked body
 * without its last chunk). The close lingers (RFC 9112 9.6): closing at once with pipelined
 * requests unread would reset the connection, and the client's kernel would drop what it had
 * received and not yet read, earlier complete responses included. */
void client_abort(struct client *c)
{
    if (c->state == C_CLOSED) return;
    if (c->ex) {
        proxy_exchange_free(c->ex);
        c->ex = NULL;
    }
    if (c->state == C_CLOSING) return; /* lingering already */
    if (c->eof) {                      /* all its input was read: a close resets nothing */
        flush_before_deciding(c);
        if (!c->write_pending) {
            client_close(c);
            return;
        }
    }
    linger(c);
}

/* Lingering close: after the last write, shut down our side and discard input for a while, so
 * the client reads the response instead of a reset. */
static void linger(struct client *c)
{
    c->state = C_CLOSING;
    timer_set(c, TO_LINGER);
    shutdown_write(c); /* after a pending write, if there is one */
    read_update(c);
}

void client_exchange_done(struct client *c, bool keep)
{
    if (c->ex) {
        proxy_exchange_free(c->ex);
        c->ex = NULL;
    }
    if (c->state == C_CLOSED) return;
    /* a client that half-closed after pipelining still gets an answer to every request it sent
     * (nginx does the same): its EOF ends the connection once the buffered bytes are used up */
    bool buffered = c->in.off < c->in.len;
    if (!keep || (c->eof && !buffered) || c->loop->draining) {
        if (c->eof) flush_before_deciding(c); /* linger sends it in shutdown_write */
        if (c->eof && !c->write_pending)
            client_close(c);
        else
            linger(c);
        return;
    }
    c->state = C_HEAD;
    /* drop the finished request; pipelined bytes move to the front */
    if (c->in.off == c->in.len) {
        inbuf_free(&c->in, &c->loop->pool);
        c->fwd = c->dw = 0;
        timer_set(c, TO_IDLE);
    } else {
        inbuf_shift(&c->in, c->in.off);
        c->fwd = c->dw = 0;
        timer_set(c, TO_HEADER);
    }
    client_process(c);
    /* after EOF an incomplete head can never complete: what was answered goes out, then close */
    if (c->eof && c->state == C_HEAD) client_abort(c);
}

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 508:
        return "Loop Detected";
    default:
        return "Error";
    }
}

static size_t json_str(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    if (cap < 3) return 0;
    out[n++] = '"';
    for (; *s && n + 8 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[n++] = '\\';
            out[n++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", ch);
        } else {
            out[n++] = (char)ch;
        }
    }
    out[n++] = '"';
    return n;
}

/* A complete response written in one go, then the connection closes. */
void client_respond(struct client *c, int status, const char *ctype, const char *body,
                    size_t body_len, int retry_after_s)
{
    if (c->state == C_CLOSED || c->state == C_CLOSING) return;
    if (!c->admin) proxy_count(c->loop, c->ex, status); /* proxied requests only */
    if (c->ex) {
        proxy_exchange_free(c->ex);
        c->ex = NULL;
    }
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n",
                      status, reason(status), ctype, body_len);
    if (retry_after_s > 0)
        hl += snprintf(head + hl, sizeof head - (size_t)hl, "Retry-After: %d\r\n", retry_after_s);
    hl += snprintf(head + hl, sizeof head - (size_t)hl, "\r\n");
    uv_buf_t b[2] = {uv_buf_init(head, (unsigned)hl),
                     uv_buf_init((char *)body, (unsigned)body_len)};
    /* behind a pending write (a relayed 1xx) it queues; uv_shutdown waits for both */
    if (write_or_queue(c, b, 2, true) < 0) {
        client_close(c);
        return;
    }
    linger(c);
}

void client_error(struct client *c, int status, const char *code, const char *detail,
                  const char *provider, int retry_after_s)
{
    char body[ERROR_BODY_MAX];
    size_t n = (size_t)snprintf(body, sizeof body, "{\"error\": \"%s\", \"detail\": ", code);
    n += json_str(body + n, sizeof body - n - 64, detail);
    if (provider) {
        n += (size_t)snprintf(body + n, sizeof body - n, ", \"provider\": ");
        n += json_str(body + n, sizeof body - n - 4, provider);
    }
    n += (size_t)snprintf(body + n, sizeof body - n, "}\n");
    if (status >= 500 || status == 408)
        log_info("%d %s: %s", status, code, detail);
    else
        log_debug("%d %s: %s", status, code, detail);
    client_respond(c, status, "application/json", body, n, retry_after_s);
}

/* ---- accepting ---- */

static void accept_one(struct listener *ls)
{
    struct loop *l = ls->loop;
    struct client *c = calloc(1, sizeof *c);
    if (!c) return;
    uv_tcp_init(&l->uv, &c->tcp);
    if (uv_accept((uv_stream_t *)&ls->tcp, (uv_stream_t *)&c->tcp) < 0) {
        c->tcp.data = c;
        uv_close((uv_handle_t *)&c->tcp, on_client_closed);
        return;
    }
    c->tcp.data = c;
    c->loop = l;
    c->admin = ls->admin;
    c->state = C_HEAD;

    uv_tcp_nodelay(&c->tcp, 1);
    c->next = l->clients;
    if (l->clients) l->clients->prev = c;
    l->clients = c;
    l->n_clients++;
    if (!c->admin) l->stats.open_connections++; /* the proxy listeners' */
    timer_set(c, TO_HEADER);
    read_update(c);
}

static bool at_limit(struct loop *l)
{
    return l->n_clients >= l->cfg->limits.max_connections;
}

static void on_connection(uv_stream_t *s, int status)
{
    struct listener *ls = s->data;
    if (status < 0) return;
    if (at_limit(ls->loop) && !ls->admin) {
        /* Leave it in the kernel's queue: libuv stops polling this listener until
         * uv_accept is called, which accept_pending does when a slot frees. */
        ls->pending = true;
        return;
    }
    accept_one(ls);
}

static void accept_pending(struct loop *l)
{
    for (int i = 0; i < l->n_listeners && !at_limit(l) && !l->draining; i++) {
        struct listener *ls = &l->listeners[i];
        if (ls->pending) {
            ls->pending = false;
            accept_one(ls);
        }
    }
}

static int listen_one(struct loop *l, struct listener *ls, const struct listen_addr *a, bool admin,
                      char *err, size_t errlen)
{
    ls->loop = l;
    ls->admin = admin;
    uv_tcp_init(&l->uv, &ls->tcp);
    ls->tcp.data = ls;
    unsigned flags = a->sa.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
    int e = uv_tcp_bind(&ls->tcp, (const struct sockaddr *)&a->sa, flags);
    if (e == 0) e = uv_listen((uv_stream_t *)&ls->tcp, LISTEN_BACKLOG, on_connection);
    if (e < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", a->text, uv_strerror(e));
        return -1;
    }
    return 0;
}

int server_listen(struct loop *l, char *err, size_t errlen)
{
    const struct config *cfg = l->cfg;
    int n = cfg->n_listen + (cfg->has_admin ? 1 : 0);
    l->listeners = calloc((size_t)n, sizeof *l->listeners);
    if (!l->listeners) return -1;
    for (int i = 0; i < cfg->n_listen; i++) {
        l->n_listeners++;
        if (listen_one(l, &l->listeners[i], &cfg->listen[i], false, err, errlen) < 0) return -1;
        log_info("listening on %s", cfg->listen[i].text);
    }
    if (cfg->has_admin) {
        l->n_listeners++;
        if (listen_one(l, &l->listeners[n - 1], &cfg->admin_listen, true, err, errlen) < 0)
            return -1;
        log_info("admin listening on %s", cfg->admin_listen.text);
    }
    return 0;
}

void server_stop_listening(struct loop *l)
{
    for (int i = 0; i < l->n_listeners; i++)
        if (!uv_is_closing((uv_handle_t *)&l->listeners[i].tcp))
            uv_close((uv_handle_t *)&l->listeners[i].tcp, NULL);
}

void server_close_clients(struct loop *l, bool force)
{
    struct client *c = l->clients;
    while (c) {
        struct client *next = c->next;
        bool idle = c->state == C_HEAD && !c->ex && c->in.len == c->in.off;
        if (force || idle) client_close(c);
        c = next;
    }
}
