/* proxy.h - one request's life as a state machine: route, token, upstream connection, request
 * head and body forwarding, response head rewriting and body relay, replay, completion.
 *
 * A struct exchange comes from the loop's free list (proxy_exchange_new) and goes back when the
 * request is over. It holds a reference on the configuration snapshot that was current when
 * the request began. Its header arrays and head buffer are allocated once per exchange object,
 * not per request. */
#ifndef AUTHPROXY_PROXY_H
#define AUTHPROXY_PROXY_H

#include <llhttp.h>
#include <stdbool.h>
#include <stdint.h>

#include "http.h"
#include "router.h"
#include "token.h"

struct loop;
struct client;
struct upconn;

enum exchange_state { EX_HEAD, EX_TOKEN, EX_CONNECT, EX_SEND, EX_DONE };

struct exchange {
    struct head req;  /* client parser's data points here */
    struct head resp; /* response parser's data points here */
    struct exchange *next_free;
    struct loop *loop;
    struct client *c;
    struct config *cfg;
    const struct route_config *route;
    struct upconn *up;
    llhttp_t parser; /* the request's */
    llhttp_t rp;     /* the response's */
    struct token_wait tw;
    int admin_provider; /* admin POST /tokens/<name>/refresh: whose mint it waits for */
    char *out;          /* request line / response head scratch, out_cap bytes */
    uint32_t out_cap;
    char *saved; /* the upstream request head without token, kept for a 401 replay */
    uint32_t saved_len, saved_cap;
    char *replay; /* request body bytes sent so far as sent (chunked: as reframed), while the
                   * body is within limits.retry_buffer_bytes and the loop's replay budget */
    uint64_t replay_len, replay_cap, replay_body; /* replay_body: body bytes, no framing */
    uint32_t chunk_ext; /* extension bytes on the chunk-size line being parsed */
    uint8_t state;
    uint8_t method;
    uint8_t http_minor;
    bool origin_form, has_body, req_complete, client_keep_alive;
    bool use_token, head_sent, up_write_pending, client_write_pending;
    bool resp_head_ready, resp_started, resp_done, resp_dechunk, resp_close_delimited;
    bool retried, resp_kick, head_saved;
    bool replayed, replay_overflow;
    bool req_chunked, req_last_chunk; /* chunked request: reframed; its last chunk was sent */
    char chunk_line[12];              /* "<hex size>\r\n" of the chunk being sent */
    uint32_t resp_w;                  /* dechunk: write cursor in the upstream buffer */
    uint32_t resp_mark;               /* start of response bytes not yet written to the client */
    uint32_t head_out;                /* length of a response head in out not yet written */
    /* not cleared per request (set before use; proxy_exchange_new resets host, port, tok) */
    char host[HOST_MAX];
    struct token_result tok;
    int port;
    /* upstream target */
    bool up_tls;
    const char *up_host; /* route's upstream host or ex->host */
    int up_port;
    uint32_t path_off, path_len; /* in the client buffer */
    uint64_t t_start;
};

struct exchange *proxy_exchange_new(struct loop *l, struct client *c);
void proxy_exchange_free(struct exchange *ex);
/* Frees pooled exchanges beyond keep (0 at exit; after a burst, see main.c's memory trim). */
void proxy_free_list_trim(struct loop *l, int keep);
/* Counts a request answered with status (by class, and by route when it has one). */
void proxy_count(struct loop *l, const struct exchange *ex, int status);

/* The server parsed a request head (c->ex->req); validates, routes and starts the exchange. */
void proxy_request(struct exchange *ex);
/* The server parsed more body bytes (or the end of the request). */
void proxy_client_data(struct exchange *ex);
/* Does the exchange still read the request head from the client's input buffer? */
static inline bool proxy_reads_input(const struct exchange *ex)
{
    return !ex->head_saved;
}
/* A pending write to the client completed. */
void proxy_client_drained(struct exchange *ex);
/* A response write reported done became a pending one (sock.h): relaying waits for it. */
void proxy_client_pending(struct exchange *ex);

#endif
