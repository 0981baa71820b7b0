/* buf.h - byte buffers: the input buffer of a connection and a per-loop pool of fixed blocks.
 *
 * A bufpool belongs to one loop and is used only from that loop's thread. Blocks taken with
 * bufpool_get() go back with bufpool_put(); the pool keeps at most `keep` free blocks and frees
 * the rest, so an idle process holds little memory.
 *
 * Reads go into one shared block per loop: a connection with no bytes to keep borrows it for
 * the length of a read callback (inbuf_for_read) and gives it back at the end (inbuf_settle);
 * the reads of a batch (sock.c) each borrow a pool block the same way,
 * keeping only what must outlive the callback (a head waiting for a token, bytes not yet
 * forwarded). Writes that cannot complete at once copy what is left (bufpool_alloc), so no
 * pending write points into an input buffer. An inbuf owns its base unless `lent`: a pool
 * block (cap == BUF_BLOCK) or a malloc'd area (a small kept rest, or a head that grew). */
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
    int out, peak_out; /* blocks handed out and not back; the most since the last trim */
    char *shared;      /* the block reads borrow; NULL until first needed */
    bool lent;         /* shared is borrowed by an inbuf right now */
};

int bufpool_init(struct bufpool *p, int keep);
void bufpool_destroy(struct bufpool *p);
void *bufpool_get(struct bufpool *p);
void bufpool_put(struct bufpool *p, void *block);
/* Frees free blocks beyond keep. */
void bufpool_trim(struct bufpool *p, int keep);
/* size bytes that must outlive a call (the rest of a partial write): a pool block when size
 * fits one and is not small, else malloc'd. Give back with bufpool_release(p, ptr, size). */
void *bufpool_alloc(struct bufpool *p, size_t size);
void bufpool_release(struct bufpool *p, void *ptr, size_t size);

/* Bytes [off, len) are received and not yet consumed; [len, cap) is free space for reads. */
struct inbuf {
    char *base;
    uint32_t cap, len, off;
    bool lent; /* base is borrowed for one read callback: the pool's shared block, or another */
};

/* Makes sure base exists (a pool block of b's own). Returns -1 when out of memory. */
int inbuf_ensure(struct inbuf *b, struct bufpool *p);
/* For a read: b's own base if it has one, else the shared block when nobody holds it, else
 * (a read nested in another's callback, or one of a batch of reads) a pool block lent the same
 * way. Returns -1 when out of memory. */
int inbuf_for_read(struct inbuf *b, struct bufpool *p);
/* End of a read callback: a borrowed block goes back to the pool; bytes [0, len) still held
 * (len > 0) become b's own first, copied when few, else by keeping the block itself. */
void inbuf_settle(struct inbuf *b, struct bufpool *p);
/* Grows to at least want bytes (copying; offsets stay valid). Returns -1 on failure. */
int inbuf_grow(struct inbuf *b, struct bufpool *p, uint32_t want);
/* Moves [from, len) to the start; callers adjust their own offsets by -from. */
void inbuf_shift(struct inbuf *b, uint32_t from);

void inbuf_free(struct inbuf *b, struct bufpool *p);

size_t iov_len(const uv_buf_t *bufs, unsigned n);
/* Copies the bytes of bufs after the first `skip` to dst. Returns how many were copied. */
size_t iov_copy(const uv_buf_t *bufs, unsigned n, size_t skip, char *dst);

#endif
