/* loop.h - everything one event loop owns. One struct loop per worker thread; nothing mutable
 * is shared between loops except through the token cache's own locking.
 *
 * The loop holds a reference on the current configuration snapshot; each request takes its own
 * reference when it starts, so a reload only changes what new requests see. */
#ifndef AUTHPROXY_LOOP_H
#define AUTHPROXY_LOOP_H

#include <openssl/ssl.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "sock.h"
#include "config.h"
#include "stats.h"
#include "timeouts.h"

struct client;
struct exchange;
struct upstream_host;
struct token_cache;

struct listener {
    uv_tcp_t tcp;
    struct loop *loop;
    bool pending; /* a connection waits for uv_accept (max_connections reached) */
    bool admin;
};

struct loop {
    uv_loop_t uv;
    struct config *cfg;
    SSL_CTX *ssl_ctx;
    struct bufpool pool;
    struct outbox out; /* small writes of this iteration (sock.c) */
    struct listener *listeners;
    int n_listeners;
    struct client *clients; /* every open client connection */
    struct timeouts to;     /* every connection timeout of this loop */
    int n_clients;
    bool draining;
    uint64_t stop_deadline_ms; /* loop time: the stop ends by then (limits.drain_ms) */
    struct exchange *free_ex;  /* free list of exchanges */
    int n_free_ex;
    int active_ex, peak_ex;      /* exchanges in use now, and at most since the last memory trim */
    uint64_t replay_reserved;    /* bytes of every exchange's replay buffer (capacity) */
    struct upstream_host *hosts; /* upstream pool keys, most recent first */
    int n_hosts;
    char *scratch; /* BUF_BLOCK bytes for TLS ciphertext reads */
    struct stats stats;
    uint64_t (*route_stats)[6]; /* requests per route of cfg and status class */
    int n_route_stats;
    struct token_cache *tokens, *tokens_closing;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t drain_timer;
    uv_timer_t trim_timer; /* trim.c */
};

#endif
