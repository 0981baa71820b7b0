/* upstream.c - the upstream connection pool and transport (plain TCP or TLS via memory BIOs).
 *
 * Memory: struct upstream_host entries belong to the loop (freed by upstream_pool_close_all);
 * each struct upconn is malloc'd here and freed in the close callback of its last handle. While
 * idle a connection holds no input buffer. After ops->ready(err) or ops->closed() the connection
 * is closed here: the owner must drop its pointer and not call it again. No header is written
 * to a TLS connection before its handshake (chain + host name) is verified: the owner only gets
 * the connection from ops->ready(0) or from the idle pool.
 *
 * While a request on a connection is pending: the name resolution (c->gai) runs on libuv's
 * thread pool and cannot be stopped once started, so c is freed by whichever ends last, the
 * handle's close callback or on_resolved (c->resolving, c->handle_closed); the connect request
 * lives in c and libuv ends it before the close callback; queued writes own copies (sock.h).
 * The owner's callbacks never run inside a call the owner made: an immediate connect failure
 * is returned by upstream_acquire, and plaintext OpenSSL still holds (after a pump that filled
 * c->in, or when the owner resumes reading) is handed over on the next loop turn (c->kick), not
 * from inside upconn_read or the owner's own data callback. */
#include "upstream.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "sock.h"
#include "loop.h"

#define UPSTREAM_IDLE_MAX 256 /* idle connections kept per host */
#define UPSTREAM_DNS_TTL_MS 30000
#define UPSTREAM_HOSTS_MAX 1024 /* pool keys kept; beyond, the least recently used unused go */

enum { UC_RESOLVING, UC_CONNECTING, UC_HANDSHAKE, UC_ACTIVE, UC_IDLE, UC_CLOSING };

static void conn_fail(struct upconn *c, int err);
static void tls_handshake(struct upconn *c);
static void on_kick(struct tnode *n);

static uint64_t now_ms(struct loop *l)
{
    return uv_now(&l->uv);
}

/* ---- hosts ---- */

static void host_free(struct upstream_host *h);

/* Wildcard routes make the set of hosts open-ended: past UPSTREAM_HOSTS_MAX keys, the least
 * recently used key without connections goes (its DNS answer and TLS session with it). */
static void hosts_trim(struct loop *l)
{
    struct upstream_host **victim = NULL;
    for (struct upstream_host **pp = &l->hosts; *pp; pp = &(*pp)->next)
        if ((*pp)->conns == 0) victim = pp;
    if (!victim) return;
    struct upstream_host *h = *victim;
    *victim = h->next;
    host_free(h);
    l->n_hosts--;
}

static struct upstream_host *host_get(struct loop *l, bool tls, const char *name, int port)
{
    struct upstream_host **pp = &l->hosts;
    for (struct upstream_host *h = l->hosts; h; pp = &h->next, h = h->next) {
        if (h->tls == tls && h->port == port && strcmp(h->host, name) == 0) {
            *pp = h->next; /* move to front */
            h->next = l->hosts;
            l->hosts = h;
            return h;
        }
    }
    if (l->n_hosts >= UPSTREAM_HOSTS_MAX) hosts_trim(l);
    struct upstream_host *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->host = strdup(name);
    if (!h->host) {
        free(h);
        return NULL;
    }
    h->tls = tls;
    h->port = port;
    h->next = l->hosts;
    l->hosts = h;
    l->n_hosts++;
    return h;
}

static void host_free(struct upstream_host *h)
{
    if (h->session) SSL_SESSION_free(h->session);
    free(h->host);
    free(h);
}

/* ---- closing ---- */

static void on_handle_closed(uv_handle_t *hd)
{
    struct upconn *c = hd->data;
    inbuf_free(&c->in, &c->loop->pool);
    if (c->ssl) SSL_free(c->ssl); /* frees both BIOs */
    c->ssl = NULL;
    c->handle_closed = true;
    if (!c->resolving) free(c); /* else on_resolved frees it */
}

static void idle_unlink(struct upconn *c)
{
    struct upstream_host *h = c->host;
    for (struct upconn **pp = &h->idle; *pp; pp = &(*pp)->idle_next) {
        if (*pp == c) {
            *pp = c->idle_next;
            h->n_idle--;
            break;
        }
    }
    c->idle_next = NULL;
}

void upconn_close(struct upconn *c)
{
    if (c->state == UC_CLOSING) return;
    if (c->state == UC_IDLE) idle_unlink(c);
    c->state = UC_CLOSING;
    c->host->conns--;
    c->ops = NULL;
    timeout_clear(c->loop, &c->to);
    timeout_clear(c->loop, &c->kick);
    if (c->resolving) uv_cancel((uv_req_t *)&c->gai); /* ends it early if not yet started */
    sock_flush(&c->loop->out, (uv_stream_t *)&c->tcp, false);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/* Tells the owner and closes. */
static void conn_fail(struct upconn *c, int err)
{
    if (c->state == UC_CLOSING) return;
    const struct upconn_ops *ops = c->ops;
    void *arg = c->arg;
    bool connecting = c->state < UC_ACTIVE;
    upconn_close(c);
    if (!ops) return;
    if (connecting)
        ops->ready(arg, c, err);
    else
        ops->closed(arg, c, err);
}

static void on_timer(struct tnode *n)
{
    struct upconn *c = container_of(n, struct upconn, to);
    if (c->state == UC_IDLE) {
        upconn_close(c);
        return;
    }
    if (c->state < UC_ACTIVE)
        log_warn("upstream %s:%d: connect timed out", c->host->host, c->host->port);
    conn_fail(c, UP_TIMEOUT);
}

void upconn_timeout(struct upconn *c, bool on)
{
    if (on)
        timeout_set(c->loop, &c->to, TO_RESPONSE);
    else
        timeout_clear(c->loop, &c->to);
}

void upstream_timers_init(struct loop *l)
{
    l->to.fire[TO_CONNECT] = l->to.fire[TO_RESPONSE] = l->to.fire[TO_POOL] = on_timer;
    l->to.fire[TO_NOW] = on_kick;
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct upconn *c = hd->data;
    if (c->ssl) {
        buf->base = c->loop->scratch;
        buf->len = BUF_BLOCK;
        return;
    }
    buf->base = NULL; /* readiness only: on_read receives itself (sock.h) */
    buf->len = 0;
}

/* Decrypts what the read BIO holds into c->in while there is room. Returns -1 on a TLS error,
 * 1 on close_notify, 0 otherwise. */
static int tls_pump(struct upconn *c)
{
    if (inbuf_for_read(&c->in, &c->loop->pool) < 0) return -1;
    while (c->in.len < c->in.cap) {
        int n = SSL_read(c->ssl, c->in.base + c->in.len, (int)(c->in.cap - c->in.len));
        if (n > 0) {
            c->in.len += (uint32_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ) return 0;
        if (e == SSL_ERROR_ZERO_RETURN) return 1;
        return -1;
    }
    return 0;
}

/* Plaintext OpenSSL can still give (bytes after a close_notify never become any). */
static bool tls_has_pending(struct upconn *c)
{
    return c->ssl && !(SSL_get_shutdown(c->ssl) & SSL_RECEIVED_SHUTDOWN) &&
           (BIO_ctrl_pending(c->rbio) > 0 || SSL_pending(c->ssl) > 0);
}

static int tls_flush(struct upconn *c, bool gather);

static void deliver(struct upconn *c)
{
    if (c->ssl) {
        int r = tls_pump(c);
        tls_flush(c, false); /* SSL_read may have produced output (key update, alerts) */
        if (r < 0) {
            conn_fail(c, UP_UNAVAILABLE);
            return;
        }
        if (r == 1) c->eof = true;
    }
    if (c->in.len > c->in.off && c->ops) c->ops->data(c->arg, c);
    if (c->state == UC_ACTIVE && c->eof && c->ops && (!c->ssl || !tls_has_pending(c)))
        conn_fail(c, 0);
    inbuf_settle(&c->in, &c->loop->pool); /* what the owner still holds becomes c's own */
    /* A pump stops when c->in is full: what OpenSSL still holds (a read can bring several
     * records) gets no socket read to carry it once the upstream has sent its last bytes, so
     * it goes to the owner on the next turn while the owner reads and has left room. */
    if (c->state == UC_ACTIVE && c->ops && !c->paused && tls_has_pending(c) &&
        (!c->in.base || c->in.len < c->in.cap))
        timeout_set(c->loop, &c->kick, TO_NOW);
}

static void read_stop(struct upconn *c)
{
    uv_read_stop((uv_stream_t *)&c->tcp);
    sock_recv_cancel(&c->loop->out, (uv_stream_t *)&c->tcp);
    c->reading = false;
}

/* nread as sock_recv gives it (bytes in c->in), or from libuv into buf (TLS: ciphertext). */
static void read_done(struct upconn *c, ssize_t nread, const uv_buf_t *buf)
{
    if (c->state == UC_CLOSING) return;
    if (c->state == UC_IDLE) { /* the server closed (or spoke) while idle */
        upconn_close(c);
        return;
    }
    if (nread == 0) return;
    if (nread < 0) {
        if (nread == UV_EOF && c->state == UC_ACTIVE) {
            c->eof = true;
            read_stop(c);
            if (tls_has_pending(c)) { /* the plaintext before the close still goes first */
                if (!c->paused) deliver(c);
                return;
            }
            if (c->ops) conn_fail(c, 0);
            return;
        }
        conn_fail(c, UP_UNAVAILABLE);
        return;
    }
    if (c->to.kind == TO_RESPONSE) timeout_set(c->loop, &c->to, TO_RESPONSE); /* input came */
    if (c->ssl) {
        if (BIO_write(c->rbio, buf->base, (int)nread) != nread) {
            conn_fail(c, UP_UNAVAILABLE);
            return;
        }
        if (c->state == UC_HANDSHAKE) {
            tls_handshake(c);
            return;
        }
    } /* else sock_recv put the bytes in c->in */
    deliver(c);
}

static void on_received(uv_stream_t *s, ssize_t nread)
{
    struct upconn *c = s->data;
    read_done(c, nread, NULL);
    inbuf_settle(&c->in, &c->loop->pool);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct upconn *c = s->data;
    if (nread == UV_ENOBUFS && !c->ssl && c->state != UC_CLOSING) {
        if (sock_recv_later(&c->loop->out, s, &c->in, on_received)) return;
        nread = sock_recv(s, &c->in, &c->loop->pool);
    }
    read_done(c, nread, buf);
    inbuf_settle(&c->in, &c->loop->pool);
}

void upconn_read(struct upconn *c, bool on)
{
    if (c->state == UC_CLOSING) return;
    c->paused = !on;
    if (on && !c->reading && !c->eof) {
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        c->reading = true;
    } else if (!on && c->reading) {
        read_stop(c);
    }
    /* no socket read will come for what OpenSSL already holds: hand it over next turn */
    if (on && tls_has_pending(c)) timeout_set(c->loop, &c->kick, TO_NOW);
}

static void on_kick(struct tnode *n)
{
    struct upconn *c = container_of(n, struct upconn, kick);
    if (c->state != UC_ACTIVE || c->paused || !c->ops) return;
    deliver(c);
}

/* ---- writing ---- */

static void on_written(uv_write_t *req, int status)
{
    struct upconn *c = sock_write_done(req);
    c->writes_pending--;
    if (c->state == UC_CLOSING) return;
    if (status < 0) {
        conn_fail(c, UP_UNAVAILABLE);
        return;
    }
    /* handshake writes drain before the owner has a connection to write on */
    if (c->writes_pending == 0 && c->state == UC_ACTIVE && c->ops) c->ops->drained(c->arg, c);
}

/* A gathered write the socket did not take whole is queued now (sock.h): count it. */
static void gathered_pending(void *owner)
{
    struct upconn *c = owner;
    c->writes_pending++;
    if (c->state == UC_ACTIVE && c->ops) c->ops->pending(c->arg, c);
}

/* Writes now what the socket takes, the rest later from a copy (sock.h): 0, 1 pending, -1. */
static int write_out(struct upconn *c, const uv_buf_t *bufs, unsigned n, bool gather)
{
    struct sock_owner who = {c, on_written, gathered_pending};
    int w = sock_write((uv_stream_t *)&c->tcp, &c->loop->out, bufs, n, gather, &who);
    if (w == 1) c->writes_pending++;
    return w;
}

/* Sends what the write BIO holds. Returns 0 when all went out now, 1 when a write is pending,
 * -1 on error. */
static int tls_flush(struct upconn *c, bool gather)
{
    char *p;
    long n = BIO_get_mem_data(c->wbio, &p);
    if (n <= 0) return c->writes_pending ? 1 : 0;
    uv_buf_t b = uv_buf_init(p, (unsigned)n);
    if (write_out(c, &b, 1, gather) < 0) return -1;
    (void)BIO_reset(c->wbio);
    return c->writes_pending ? 1 : 0;
}

int upconn_write(struct upconn *c, const uv_buf_t *bufs, unsigned n, bool head)
{
    if (c->state != UC_ACTIVE) return -1;
    if (c->ssl) {
        for (unsigned i = 0; i < n; i++) {
            if (bufs[i].len == 0) continue;
            if (SSL_write(c->ssl, bufs[i].base, (int)bufs[i].len) != (int)bufs[i].len) return -1;
        }
        return tls_flush(c, head);
    }
    return write_out(c, bufs, n, head);
}

/* ---- connecting ---- */

static void ready(struct upconn *c)
{
    c->state = UC_ACTIVE;
    timeout_clear(c->loop, &c->to);
    c->loop->stats.upstream_connects++;
    if (c->ops) c->ops->ready(c->arg, c, UP_OK);
}

static void tls_handshake(struct upconn *c)
{
    int r = SSL_do_handshake(c->ssl);
    if (tls_flush(c, true) < 0) {
        conn_fail(c, UP_UNAVAILABLE);
        return;
    }
    if (r == 1) {
        ready(c);
        if (c->state == UC_ACTIVE && tls_has_pending(c)) deliver(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) return;
    long v = SSL_get_verify_result(c->ssl);
    unsigned long ee = ERR_get_error();
    char eb[160] = "";
    if (ee) ERR_error_string_n(ee, eb, sizeof eb);
    ERR_clear_error();
    log_warn("upstream %s:%d: TLS handshake failed: %s", c->host->host, c->host->port,
             v != X509_V_OK ? X509_verify_cert_error_string(v) : eb);
    conn_fail(c, UP_UNAVAILABLE);
}

static bool is_ip(const char *h)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, h, tmp) == 1 || inet_pton(AF_INET6, h, tmp) == 1;
}

static int tls_start(struct upconn *c)
{
    struct upstream_host *h = c->host;
    c->ssl = SSL_new(c->loop->ssl_ctx);
    if (!c->ssl) return -1;
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    if (!c->rbio || !c->wbio) {
        BIO_free(c->rbio);
        BIO_free(c->wbio);
        return -1;
    }
    BIO_set_mem_eof_return(c->rbio, -1);
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    SSL_set_app_data(c->ssl, c);
    SSL_set_connect_state(c->ssl);
    if (is_ip(h->host)) {
        if (!X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), h->host)) return -1;
    } else {
        if (!SSL_set_tlsext_host_name(c->ssl, h->host)) return -1;
        if (!SSL_set1_host(c->ssl, h->host)) return -1;
    }
    if (h->session) SSL_set_session(c->ssl, h->session);
    c->state = UC_HANDSHAKE;
    tls_handshake(c);
    return 0;
}

static void on_connect(uv_connect_t *req, int status)
{
    struct upconn *c = container_of(req, struct upconn, connect);
    if (c->state == UC_CLOSING) return; /* UV_ECANCELED from uv_close */
    if (status < 0) {
        c->host->addr_expiry_ms = 0; /* resolve again next time */
        log_warn("upstream %s:%d: connect failed: %s", c->host->host, c->host->port,
                 uv_strerror(status));
        conn_fail(c, UP_UNAVAILABLE);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    c->reading = true;
    if (c->host->tls) {
        if (tls_start(c) < 0) conn_fail(c, UP_UNAVAILABLE);
        return;
    }
    ready(c);
}

/* Starts the connect to the host's address. Returns <0 when it fails at once (EMFILE,
 * ENETUNREACH, EADDRNOTAVAIL...): the caller reports it, from where it may. */
static int do_connect(struct upconn *c)
{
    c->state = UC_CONNECTING;
    int e = uv_tcp_connect(&c->connect, &c->tcp, (struct sockaddr *)&c->host->addr, on_connect);
    if (e < 0) {
        c->host->addr_expiry_ms = 0;
        log_warn("upstream %s:%d: connect failed: %s", c->host->host, c->host->port,
                 uv_strerror(e));
        return -1;
    }
    return 0;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct upconn *c = container_of(req, struct upconn, gai);
    c->resolving = false;
    if (c->state == UC_CLOSING) { /* closed while resolving (timeout, client gone) */
        uv_freeaddrinfo(res);
        if (c->handle_closed) free(c); /* else the close callback frees it */
        return;
    }
    if (status < 0 || !res) {
        log_warn("upstream %s: cannot resolve: %s", c->host->host, uv_strerror(status));
        uv_freeaddrinfo(res);
        conn_fail(c, UP_UNAVAILABLE);
        return;
    }
    struct addrinfo *pick = res;
    for (struct addrinfo *a = res; a; a = a->ai_next) /* prefer IPv4: loopback services */
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    memcpy(&c->host->addr, pick->ai_addr, pick->ai_addrlen);
    if (pick->ai_family == AF_INET)
        ((struct sockaddr_in *)&c->host->addr)->sin_port = htons((uint16_t)c->host->port);
    else
        ((struct sockaddr_in6 *)&c->host->addr)->sin6_port = htons((uint16_t)c->host->port);
    c->host->addr_expiry_ms = now_ms(c->loop) + UPSTREAM_DNS_TTL_MS;
    uv_freeaddrinfo(res);
    if (do_connect(c) < 0) conn_fail(c, UP_UNAVAILABLE); /* in libuv's callback: tell now */
}

/* Connects at once to a known address, or starts resolving. <0: failed at once. */
static int resolve(struct upconn *c)
{
    struct upstream_host *h = c->host;
    if (h->addr_expiry_ms > now_ms(c->loop)) return do_connect(c);
    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    if (uv_ip4_addr(h->host, h->port, &a4) == 0) {
        memcpy(&h->addr, &a4, sizeof a4);
        h->addr_expiry_ms = UINT64_MAX;
        return do_connect(c);
    }
    if (uv_ip6_addr(h->host, h->port, &a6) == 0) {
        memcpy(&h->addr, &a6, sizeof a6);
        h->addr_expiry_ms = UINT64_MAX;
        return do_connect(c);
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    c->state = UC_RESOLVING;
    if (uv_getaddrinfo(&c->loop->uv, &c->gai, on_resolved, h->host, NULL, &hints) < 0) return -1;
    c->resolving = true;
    return 0;
}

int upstream_acquire(struct loop *l, bool tls, const char *name, int port, bool fresh,
                     const struct upconn_ops *ops, void *arg, struct upconn **out)
{
    struct upstream_host *h = host_get(l, tls, name, port);
    if (!h) return UP_UNAVAILABLE;
    if (h->idle && !fresh) {
        struct upconn *c = h->idle;
        h->idle = c->idle_next;
        h->n_idle--;
        c->idle_next = NULL;
        c->state = UC_ACTIVE;
        c->reused = true;
        c->ops = ops;
        c->arg = arg;
        timeout_clear(l, &c->to);
        l->stats.upstream_reuses++;
        *out = c;
        return 1;
    }
    struct upconn *c = calloc(1, sizeof *c);
    if (!c) return UP_UNAVAILABLE;
    c->loop = l;
    c->host = h;
    h->conns++;
    c->ops = ops;
    c->arg = arg;
    uv_tcp_init(&l->uv, &c->tcp);
    c->tcp.data = c;
    c->state = UC_RESOLVING;
    *out = c;
    timeout_set(l, &c->to, TO_CONNECT);
    if (resolve(c) < 0) {
        upconn_close(c);
        return UP_UNAVAILABLE;
    }
    return 0;
}

void upconn_release(struct upconn *c)
{
    if (c->state != UC_ACTIVE) return;
    timeout_clear(c->loop, &c->kick);
    struct upstream_host *h = c->host;
    if (c->eof || c->writes_pending || c->in.len != c->in.off || h->n_idle >= UPSTREAM_IDLE_MAX ||
        c->loop->draining || tls_has_pending(c)) {
        upconn_close(c);
        return;
    }
    inbuf_free(&c->in, &c->loop->pool);
    c->ops = NULL;
    c->arg = NULL;
    c->paused = false;
    c->state = UC_IDLE;
    c->idle_next = h->idle;
    h->idle = c;
    h->n_idle++;
    if (!c->reading) {
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        c->reading = true;
    }
    timeout_set(c->loop, &c->to, TO_POOL);
}

void upstream_pool_close_all(struct loop *l)
{
    struct upstream_host *h = l->hosts;
    while (h) {
        struct upstream_host *next = h->next;
        while (h->idle)
            upconn_close(h->idle);
        host_free(h);
        h = next;
    }
    l->hosts = NULL;
    l->n_hosts = 0;
}

/* ---- TLS context ---- */

static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct upconn *c = SSL_get_app_data(ssl);
    if (!c || c->state == UC_CLOSING) return 0;
    if (c->host->session) SSL_SESSION_free(c->host->session);
    c->host->session = sess; /* we keep the reference */
    return 1;
}

int tls_ctx_init(struct loop *l, const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "cannot create TLS context");
        return -1;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        snprintf(err, errlen, "tls.ca_file: cannot load %s", ca_file);
        SSL_CTX_free(ctx);
        ERR_clear_error();
        return -1;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    l->ssl_ctx = ctx;
    return 0;
}
