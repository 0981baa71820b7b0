/* timeouts.h - every timeout of a loop's connections without a timer handle per connection.
 *
 * Each kind of timeout has one duration, so a FIFO list per kind is ordered by deadline: setting,
 * refreshing or clearing a timeout is O(1) list work, and one uv_timer_t per loop is armed for
 * the earliest head. A struct tnode is embedded in its owner (client, upstream connection);
 * when it expires the kind's fire function gets the node and recovers the owner with
 * container_of. Owns no memory. */
#ifndef AUTHPROXY_TIMEOUTS_H
#define AUTHPROXY_TIMEOUTS_H

#include <stdint.h>
#include <uv.h>

enum timeout_kind {
    TO_NONE,
    TO_HEADER,   /* a request head must arrive within limits.header_timeout_ms */
    TO_IDLE,     /* a keep-alive client connection idles at most limits.idle_timeout_ms */
    TO_LINGER,   /* input discarded after a final response, then close */
    TO_SEND,     /* a client takes none of a pending write for limits.idle_timeout_ms */
    TO_CONNECT,  /* upstream connect + TLS handshake: limits.upstream_connect_timeout_ms */
    TO_RESPONSE, /* upstream silent while a response is due: limits.upstream_timeout_ms */
    TO_POOL,     /* an idle pooled upstream connection */
    TO_NOW,      /* the next turn of the loop: work found inside a call that must not call back */
    TO_KINDS
};

#define LINGER_MS 2000         /* after a final response, input is discarded this long at most */
#define UPSTREAM_IDLE_MS 30000 /* an idle pooled upstream connection is closed after this */

struct tnode {
    struct tnode *prev, *next;
    uint64_t deadline;
    uint32_t pass; /* TO_NOW: the on_now run it was set before; one set while it runs waits */
    uint8_t kind;
};

struct tlist {
    struct tnode *head, *tail;
};

struct loop;

struct timeouts {
    struct tlist lists[TO_KINDS];
    void (*fire[TO_KINDS])(struct tnode *n);
    uv_timer_t timer;
    uv_idle_t now;     /* runs TO_NOW nodes on the next loop iteration */
    uint64_t armed_at; /* 0: not armed */
    uint32_t pass;     /* on_now runs so far */
    struct loop *l;
};

void timeouts_init(struct loop *l);
void timeouts_close(struct loop *l);
/* (Re)starts n's timeout of kind, from now. */
void timeout_set(struct loop *l, struct tnode *n, int kind);
void timeout_clear(struct loop *l, struct tnode *n);

#endif
