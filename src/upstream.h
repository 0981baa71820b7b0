/* upstream.h - connections to upstreams: a keep-alive pool per (scheme, host, port), plain TCP
 * or TLS through OpenSSL memory BIOs, so one read/write path serves both.
 *
 * An upconn is owned by the pool while idle and by one exchange while in use. The owner reads
 * plaintext from c->in and gets events through upconn_ops; it gives the connection back with
 * upconn_release() (reusable) or upconn_close(). Memory is freed in the handle close callbacks. */
#ifndef AUTHPROXY_UPSTREAM_H
#define AUTHPROXY_UPSTREAM_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <uv.h>

#include "buf.h"
#include "config.h"
#include "timeouts.h"

struct loop;
struct upconn;

enum upstream_err {
    UP_OK = 0,
    UP_UNAVAILABLE = -1, /* refused, reset, DNS, TLS verification: 502 */
    UP_TIMEOUT = -2,     /* 504 */
};

struct upconn_ops {
    void (*ready)(void *arg, struct upconn *c, int err);  /* connected and verified, or failed */
    void (*data)(void *arg, struct upconn *c);            /* new plaintext in c->in */
    void (*closed)(void *arg, struct upconn *c, int err); /* EOF (0), error or timeout */
    void (*drained)(void *arg, struct upconn *c);         /* a pending write completed */
    void (*pending)(void *arg, struct upconn *c); /* a write reported done is pending after all */
};

struct upstream_host {
    struct upstream_host *next;
    bool tls;
    int port;
    char *host;
    SSL_SESSION *session;
    struct upconn *idle; /* LIFO of idle connections */
    int n_idle;
    int conns; /* open connections (idle or in use) that point here */
    struct sockaddr_storage addr;
    uint64_t addr_expiry_ms; /* 0: not resolved */
};

struct upconn {
    uv_tcp_t tcp;
    uv_getaddrinfo_t gai; /* outstanding while resolving: c is freed only after it returns */
    uv_connect_t connect; /* libuv ends it (UV_ECANCELED) before the close callback */
    struct tnode to;      /* connect, response or pool-idle timeout */
    struct tnode kick;    /* TO_NOW: plaintext left in OpenSSL goes to the owner next turn */
    struct loop *loop;
    struct upstream_host *host;
    SSL *ssl;
    BIO *rbio, *wbio;
    struct inbuf in; /* plaintext received */
    uint8_t state;
    bool reused, reading, eof;     /* reading: the socket is read; eof: it has ended */
    bool paused;                   /* the owner asked for no more plaintext (upconn_read) */
    bool resolving, handle_closed; /* the two owners of the memory: gai, and the handle */
    int writes_pending;
    struct upconn *idle_next;
    const struct upconn_ops *ops;
    void *arg;
};

/* Gets a connection for the caller: an idle pooled one (returns 1, ready now) unless fresh, or
 * a new one (returns 0; ops->ready called later, never before this returns). Returns <0 when
 * it fails at once (no callback follows). No function of this file calls ready, data, closed
 * or drained from inside the caller's own call: they run from libuv callbacks. pending alone
 * may run inside upconn_write (a gathered write of the same socket queued first, sock.h): it
 * only marks a write pending. */
int upstream_acquire(struct loop *l, bool tls, const char *host, int port, bool fresh,
                     const struct upconn_ops *ops, void *arg, struct upconn **out);
/* Writes plaintext. 0: all written; 1: pending (ops->drained later); <0: error. head: the
 * bytes start a request (small ones wait for the loop's batch, see sock.h). */
int upconn_write(struct upconn *c, const uv_buf_t *bufs, unsigned n, bool head);
void upconn_read(struct upconn *c, bool on);
/* Response timeout: ops->closed(UP_TIMEOUT) after limits.upstream_timeout_ms without input. */
void upconn_timeout(struct upconn *c, bool on);
void upstream_timers_init(struct loop *l);
void upconn_release(struct upconn *c);
void upconn_close(struct upconn *c);
void upstream_pool_close_all(struct loop *l);

int tls_ctx_init(struct loop *l, const char *ca_file, char *err, size_t errlen);

#endif
