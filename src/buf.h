/* buf.h - byte buffers: the input buffer of a connection and a per-loop pool of fixed blocks.
 *
 * A bufpool belongs to one loop and is used only from that loop's thread. Blocks taken with
 * bufpool_get() go back with bufpool_put(); the pool keeps at most `keep` free blocks and frees
 * the rest, so an idle process holds little memory. An inbuf owns its base: a pool block
 * (cap == BUF_BLOCK) or, once a large head has made it grow, a malloc'd area. */
#ifndef AUTHPROXY_BUF_H
#define AUTHPROXY_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define BUF_BLOCK (32 * 1024) /* one read of a 16 KiB response with its head */

#ifndef container_of
#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#endif

struct bufpool {
    void **free;
    int n_free, keep;
};

int bufpool_init(struct bufpool *p, int keep);
void bufpool_destroy(struct bufpool *p);
void *bufpool_get(struct bufpool *p);
void bufpool_put(struct bufpool *p, void *block);

/* Bytes [off, len) are received and not yet consumed; [len, cap) is free space for reads. */
struct inbuf {
    char *base;
    uint32_t cap, len, off;
};

/* Makes sure base exists (a pool block). Returns -1 when out of memory. */
int inbuf_ensure(struct inbuf *b, struct bufpool *p);
/* Grows to at least want bytes (copying; offsets stay valid). Returns -1 on failure. */
int inbuf_grow(struct inbuf *b, struct bufpool *p, uint32_t want);
/* Moves [from, len) to the start; callers adjust their own offsets by -from. */
void inbuf_shift(struct inbuf *b, uint32_t from);

void inbuf_free(struct inbuf *b, struct bufpool *p);

#define IOV_REST_MAX 64
/* After a partial write of `done` bytes of bufs: the unwritten rest as slices into rest
 * (IOV_REST_MAX entries). Returns their number (0: all written), or -1 when too many. */
int iov_rest(const uv_buf_t *bufs, unsigned n, size_t done, uv_buf_t *rest);

#endif
