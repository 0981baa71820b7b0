/* buf.c - see buf.h. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

int bufpool_init(struct bufpool *p, int keep)
{
    p->free = calloc((size_t)keep, sizeof *p->free);
    p->n_free = 0;
    p->keep = keep;
    return p->free ? 0 : -1;
}

void bufpool_destroy(struct bufpool *p)
{
    for (int i = 0; i < p->n_free; i++)
        free(p->free[i]);
    free(p->free);
    p->free = NULL;
    p->n_free = 0;
}

void *bufpool_get(struct bufpool *p)
{
    if (p->n_free > 0) return p->free[--p->n_free];
    return malloc(BUF_BLOCK);
}

void bufpool_put(struct bufpool *p, void *block)
{
    if (p->n_free < p->keep)
        p->free[p->n_free++] = block;
    else
        free(block);
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
    inbuf_free(b, p);
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
    if (b->base) {
        if (b->cap == BUF_BLOCK)
            bufpool_put(p, b->base);
        else
            free(b->base);
    }
    b->base = NULL;
    b->cap = b->len = b->off = 0;
}

int iov_rest(const uv_buf_t *bufs, unsigned n, size_t done, uv_buf_t *rest)
{
    int k = 0;
    for (unsigned i = 0; i < n; i++) {
        if (done >= bufs[i].len) {
            done -= bufs[i].len;
            continue;
        }
        if (k == IOV_REST_MAX) return -1;
        rest[k++] = uv_buf_init(bufs[i].base + done, (unsigned)(bufs[i].len - done));
        done = 0;
    }
    return k;
}
