/* test_buf.c - input buffers keep their bytes and offsets when they grow or shift (a head
 * larger than one block once lost them), the pool bounds what it keeps, and iov_rest finds
 * what a partial write left. */
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "unit.h"

TEST(inbuf_grow_keeps_bytes_and_offsets)
{
    struct bufpool pool;
    REQUIRE(bufpool_init(&pool, 2) == 0);
    struct inbuf b = {0};
    REQUIRE(inbuf_ensure(&b, &pool) == 0);
    CHECK_EQ_INT(b.cap, BUF_BLOCK);
    memset(b.base, 'x', BUF_BLOCK);
    memcpy(b.base, "head", 4);
    b.len = BUF_BLOCK;
    b.off = 100;
    REQUIRE(inbuf_grow(&b, &pool, 3 * BUF_BLOCK) == 0);
    CHECK_EQ_INT(b.cap, 3 * BUF_BLOCK);
    CHECK_EQ_INT(b.len, BUF_BLOCK);
    CHECK_EQ_INT(b.off, 100);
    CHECK(memcmp(b.base, "head", 4) == 0);
    CHECK(b.base[BUF_BLOCK - 1] == 'x');
    inbuf_shift(&b, 50);
    CHECK_EQ_INT(b.len, BUF_BLOCK - 50);
    CHECK_EQ_INT(b.off, 50);
    inbuf_free(&b, &pool);
    CHECK(b.base == NULL && b.len == 0 && b.cap == 0);
    /* the block given up by the growth went back to the pool; the grown area was freed */
    CHECK_EQ_INT(pool.n_free, 1);
    bufpool_destroy(&pool);
}

TEST(bufpool_keeps_at_most_keep_blocks)
{
    struct bufpool pool;
    REQUIRE(bufpool_init(&pool, 2) == 0);
    void *a = bufpool_get(&pool), *b = bufpool_get(&pool), *c = bufpool_get(&pool);
    REQUIRE(a && b && c);
    bufpool_put(&pool, a);
    bufpool_put(&pool, b);
    bufpool_put(&pool, c); /* freed, not kept */
    CHECK_EQ_INT(pool.n_free, 2);
    CHECK(bufpool_get(&pool) == b); /* LIFO: the warmest block first */
    bufpool_put(&pool, b);
    bufpool_destroy(&pool);
}

TEST(iov_rest_after_partial_writes)
{
    char x[10], y[20];
    uv_buf_t in[2] = {uv_buf_init(x, 10), uv_buf_init(y, 20)}, rest[IOV_REST_MAX];
    CHECK_EQ_INT(iov_rest(in, 2, 30, rest), 0);
    CHECK_EQ_INT(iov_rest(in, 2, 0, rest), 2);
    CHECK_EQ_INT(iov_rest(in, 2, 12, rest), 1);
    CHECK(rest[0].base == y + 2 && rest[0].len == 18);
    CHECK_EQ_INT(iov_rest(in, 2, 4, rest), 2);
    CHECK(rest[0].base == x + 4 && rest[0].len == 6 && rest[1].base == y);
    uv_buf_t many[IOV_REST_MAX + 1];
    for (int i = 0; i <= IOV_REST_MAX; i++)
        many[i] = uv_buf_init(x, 1);
    CHECK_EQ_INT(iov_rest(many, IOV_REST_MAX + 1, 0, rest), -1);
}
