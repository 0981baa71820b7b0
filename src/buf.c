/* buf.c - see buf.h. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

int bufpool_init(struct bufpool *p, int keep)
{
    p->free = calloc((size_t)keep, sizeof *p->free);
    p->n_free = 0;
    p->keep = keep;
    p->shared = NULL;
    p->lent = false;
    p->out = p->peak_out = 0;
    return p->free ? 0 : -1;
}

void bufpool_destroy(struct bufpool *p)
{
    for (int i = 0; i < p->n_free; i++)
        free(p->free[i]);
    free(p->shared);
    p->shared = NULL;
    free(p->free);
    p->free = NULL;
    p->n_free = 0;
}

void *bufpool_get(struct bufpool *p)
{
    void *b = p->n_free > 0 ? p->free[--p->n_free] : malloc(BUF_BLOCK);
    if (b && ++p->out > p->peak_out) p->peak_out = p->out;
    return b;
}

void bufpool_trim(struct bufpool *p, int keep)
{
    while (p->n_free > keep && p->n_free > 0)
        free(p->free[--p->n_free]);
}

void bufpool_put(struct bufpool *p, void *block)
{
    p->out--;
    if (p->n_free < p->keep)
        p->free[p->n_free++] = block;
    else
        free(block);
}

#define SMALL_ALLOC 2048 /* below this, malloc rather than a whole block */
#define KEEP_COPY 2048   /* a held rest up to this size is copied out of the shared block */

void *bufpool_alloc(struct bufpool *p, size_t size)
{
    if (size > SMALL_ALLOC && size <= BUF_BLOCK) return bufpool_get(p);
    return malloc(size ? size : 1);
}

void bufpool_release(struct bufpool *p, void *ptr, size_t size)
{
    if (size > SMALL_ALLOC && size <= BUF_BLOCK)
        bufpool_put(p, ptr);
    else
        free(ptr);
}

int inbuf_for_read(struct inbuf *b, struct bufpool *p)
{
    if (b->base) return 0;
    if (p->lent) { /* a read nested in another's, or one of a batch: a block lent for it */
        b->base = bufpool_get(p);
        if (!b->base) return -1;
    } else {
        if (!p->shared) p->shared = bufpool_get(p);
        if (!p->shared) return -1;
        b->base = p->shared;
        p->lent = true;
    }
    b->cap = BUF_BLOCK;
    b->len = b->off = 0;
    b->lent = true;
    return 0;
}

/* The lent block goes back: the shared one stays the pool's, another returns to the pool. */
static void unlend(struct inbuf *b, struct bufpool *p)
{
    b->lent = false;
    if (b->base == p->shared)
        p->lent = false;
    else
        bufpool_put(p, b->base);
}

/* b stops borrowing and keeps the block as its own (a shared one is replaced at the next read). */
static void keep_lent(struct inbuf *b, struct bufpool *p)
{
    b->lent = false;
    if (b->base == p->shared) {
        p->shared = NULL;
        p->lent = false;
    }
}

void inbuf_settle(struct inbuf *b, struct bufpool *p)
{
    if (!b->lent) return;
    if (b->len == 0) {
        unlend(b, p);
        b->base = NULL;
        b->cap = b->off = 0;
        return;
    }
    if (b->len <= KEEP_COPY) {
        char *n = malloc(2 * KEEP_COPY); /* room for the rest of a head */
        if (n) {
            memcpy(n, b->base, b->len);
            unlend(b, p);
            b->base = n;
            b->cap = 2 * KEEP_COPY;
            return;
        }
    }
    keep_lent(b, p);
}

int inbuf_ensure(struct inbuf *b, struct bufpool *p)
{
    if (b->base) return 0;
    b->base = bufpool_get(p);
    if (!b->base) return -1;
    b->cap = BUF_BLOCK;
    b->len = b->off = 0;
    return 0;
}

int inbuf_grow(struct inbuf *b, struct bufpool *p, uint32_t want)
{
    if (want <= b->cap) return 0;
    char *n = malloc(want);
    if (!n) return -1;
    memcpy(n, b->base, b->len);
    uint32_t len = b->len, off = b->off;
    inbuf_free(b, p); /* a borrowed block just goes back */
    b->base = n;
    b->cap = want;
    b->len = len;
    b->off = off;
    return 0;
}

void inbuf_shift(struct inbuf *b, uint32_t from)
{
    if (from == 0) return;
    memmove(b->base, b->base + from, b->len - from);
    b->len -= from;
    b->off = b->off > from ? b->off - from : 0;
}

void inbuf_free(struct inbuf *b, struct bufpool *p)
{
    if (b->lent)
        unlend(b, p);
    else if (b->base) {
        if (b->cap == BUF_BLOCK)
            bufpool_put(p, b->base);
        else
            free(b->base);
    }
    b->base = NULL;
    b->cap = b->len = b->off = 0;
}

size_t iov_len(const uv_buf_t *bufs, unsigned n)
{
    size_t t = 0;
    for (unsigned i = 0; i < n; i++)
        t += bufs[i].len;
    return t;
}

size_t iov_copy(const uv_buf_t *bufs, unsigned n, size_t skip, char *dst)
{
    size_t k = 0;
    for (unsigned i = 0; i < n; i++) {
        if (skip >= bufs[i].len) {
            skip -= bufs[i].len;
            continue;
        }
        memcpy(dst + k, bufs[i].base + skip, bufs[i].len - skip);
        k += bufs[i].len - skip;
        skip = 0;
    }
    return k;
}
