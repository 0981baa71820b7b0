/* server.h - listeners and client connections: accept, read, parse request heads with llhttp
 * (strict), enforce the inbound limits, write responses, keep-alive, pipelining, closing.
 *
 * A struct client is malloc'd at accept and freed in the close callback of its last handle.
 * Its input buffer is a pool block while there are bytes to hold and none while idle. The
 * request being served lives in a pooled struct exchange (proxy.h) referenced by c->ex. */
#ifndef AUTHPROXY_SERVER_H
#define AUTHPROXY_SERVER_H

#include <llhttp.h>
#include <stdbool.h>
#include <uv.h>

#include "buf.h"
#include "timeouts.h"

struct loop;
struct exchange;

enum client_state {
    C_HEAD,    /* waiting for / reading a request head */
    C_BODY,    /* head handed to the exchange; body bytes are parsed as they come */
    C_DONE,    /* request fully parsed; the exchange is answering */
    C_CLOSING, /* lingering close: final bytes written, input discarded */
    C_CLOSED,
};

/* Kept small: an idle keep-alive connection costs this struct and nothing else (no buffer, no
 * parser, no timer handle: timeouts are per-loop lists, see timeouts.h). */
struct client {
    uv_tcp_t tcp;
    struct loop *loop;
    struct client *prev, *next; /* loop's list of every client, for draining */
    struct tnode to;            /* header, idle or linger timeout */
    struct inbuf in; /* [fwd, dw) parsed body bytes not yet forwarded; [dw, off) chunk framing
                      * already parsed (dw == off but for chunked bodies, whose data the parser
                      * moves down to dw as it goes) */
    uint32_t fwd, dw;
    struct exchange *ex;
    uint8_t state;
    bool reading, eof, in_process, again, write_pending, admin;
};

int server_listen(struct loop *l, char *err, size_t errlen);
void server_timers_init(struct loop *l);
void server_stop_listening(struct loop *l);
/* Closes idle keep-alive connections (drain); with force, every connection. */
void server_close_clients(struct loop *l, bool force);

/* For the exchange: */
/* 0, 1 pending, -1; head: the bytes start a response (small ones wait for the loop's batch) */
int client_write(struct client *c, const uv_buf_t *bufs, unsigned n, bool head);
/* The exchange has taken [fwd, dw) of the input (written or queued). */
void client_body_taken(struct client *c);
/* The exchange sent (or copied) the parsed body bytes: nothing before off is needed now. */
static inline void client_body_forwarded(struct client *c)
{
    c->fwd = c->dw = c->in.off;
}
/* The exchange is over: response complete (keep: the connection may serve another request). */
void client_exchange_done(struct client *c, bool keep);
/* Sends an error (SPEC's JSON) and closes the connection after it. */
void client_error(struct client *c, int status, const char *code, const char *detail,
                  const char *provider, int retry_after_s);
/* Abrupt close (a response cut short must look cut). */
void client_abort(struct client *c);
/* A complete response of our own (errors, admin), then the connection closes. */
void client_respond(struct client *c, int status, const char *ctype, const char *body,
                    size_t body_len, int retry_after_s);

#endif
