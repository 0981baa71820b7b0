/* test_buf.c - input buffers keep their bytes and offsets when they grow or shift (a head
 * larger than one block once lost them), the pool bounds what it keeps, the shared read block
 * is lent to one reader at a time and what a reader still holds is kept at settle, and
 * iov_copy copies what a partial write left. */
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

TEST(shared_block_is_lent_once_and_given_back_when_empty)
{
    struct bufpool pool;
    REQUIRE(bufpool_init(&pool, 4) == 0);
    struct inbuf a = {0}, b = {0};
    REQUIRE(inbuf_for_read(&a, &pool) == 0);
    CHECK(a.lent && pool.lent && a.base == pool.shared && a.cap == BUF_BLOCK);
    /* a read nested in a's callback gets a block of its own, lent the same way */
    REQUIRE(inbuf_for_read(&b, &pool) == 0);
    CHECK(b.lent && b.base != a.base && b.base != pool.shared && b.cap == BUF_BLOCK);
    CHECK_EQ_INT(pool.out, 2);
    inbuf_free(&b, &pool);
    CHECK_EQ_INT(pool.n_free, 1);
    CHECK(b.base == NULL && pool.lent && a.lent);
    /* a consumed everything: settle gives the block back, a holds nothing */
    char *shared = pool.shared;
    inbuf_settle(&a, &pool);
    CHECK(a.base == NULL && !a.lent && !pool.lent && pool.shared == shared);
    /* the next reader borrows the same block */
    REQUIRE(inbuf_for_read(&b, &pool) == 0);
    CHECK(b.lent && b.base == shared);
    inbuf_settle(&b, &pool);
    bufpool_destroy(&pool);
}

TEST(settle_keeps_what_the_reader_still_holds)
{
    struct bufpool pool;
    REQUIRE(bufpool_init(&pool, 4) == 0);
    /* a few bytes (a head waiting for a token) are copied out of the shared block */
    struct inbuf a = {0};
    REQUIRE(inbuf_for_read(&a, &pool) == 0);
    char *shared = a.base;
    memcpy(a.base, "GET / HTTP/1.1\r\n", 16);
    a.len = 16;
    a.off = 16;
    inbuf_settle(&a, &pool);
    CHECK(!a.lent && !pool.lent && a.base != shared && pool.shared == shared);
    CHECK(a.cap > a.len && a.len == 16 && a.off == 16);
    CHECK(memcmp(a.base, "GET / HTTP/1.1\r\n", 16) == 0);
    inbuf_free(&a, &pool);
    /* many bytes keep the block itself; the pool lends a fresh one next */
    REQUIRE(inbuf_for_read(&a, &pool) == 0);
    memset(a.base, 'b', 20000);
    a.len = 20000;
    a.off = 7;
    inbuf_settle(&a, &pool);
    CHECK(!a.lent && a.base == shared && a.cap == BUF_BLOCK && a.len == 20000 && a.off == 7);
    CHECK(pool.shared == NULL);
    struct inbuf b = {0};
    REQUIRE(inbuf_for_read(&b, &pool) == 0);
    CHECK(b.lent && b.base != shared);
    inbuf_settle(&b, &pool);
    inbuf_free(&a, &pool); /* a's block goes to the pool like any other */
    CHECK_EQ_INT(pool.n_free, 1);
    bufpool_destroy(&pool);
}

/* The reads of a batch (sock.c) each borrow a block while the first holds the shared one:
 * settled, each gives its block back to the pool, copies a few held bytes out, or keeps it. */
TEST(blocks_lent_beside_the_shared_one_go_back_to_the_pool)
{
    struct bufpool pool;
    REQUIRE(bufpool_init(&pool, 8) == 0);
    struct inbuf r[4] = {{0}};
    for (int i = 0; i < 4; i++)
        REQUIRE(inbuf_for_read(&r[i], &pool) == 0);
    CHECK(r[0].base == pool.shared);
    CHECK(r[1].lent && r[2].lent && r[3].lent && pool.out == 4);
    r[2].len = 10; /* a few bytes held: copied out, the block goes back */
    memcpy(r[2].base, "0123456789", 10);
    char *kept = r[3].base;
    r[3].len = 5000; /* many: r[3] keeps its block */
    for (int i = 0; i < 4; i++)
        inbuf_settle(&r[i], &pool);
    CHECK(r[0].base == NULL && r[1].base == NULL && !pool.lent && pool.shared != NULL);
    CHECK(r[2].base && r[2].cap < BUF_BLOCK && memcmp(r[2].base, "0123456789", 10) == 0);
    CHECK(!r[3].lent && r[3].base == kept && r[3].cap == BUF_BLOCK && r[3].len == 5000);
    CHECK_EQ_INT(pool.out, 2); /* the shared block and r[3]'s */
    CHECK_EQ_INT(pool.n_free, 2);
    inbuf_free(&r[2], &pool);
    inbuf_free(&r[3], &pool);
    CHECK_EQ_INT(pool.out, 1);
    bufpool_destroy(&pool);
}

TEST(growing_a_borrowed_buffer_gives_the_shared_block_back)
{
    struct bufpool pool;
    REQUIRE(bufpool_init(&pool, 4) == 0);
    struct inbuf a = {0};
    REQUIRE(inbuf_for_read(&a, &pool) == 0);
    char *shared = a.base;
    memcpy(a.base, "abc", 3);
    a.len = 3;
    REQUIRE(inbuf_grow(&a, &pool, 2 * BUF_BLOCK) == 0);
    CHECK(!a.lent && !pool.lent && a.base != shared && pool.shared == shared);
    CHECK(memcmp(a.base, "abc", 3) == 0 && a.len == 3);
    CHECK_EQ_INT(pool.n_free, 0); /* the shared block is not put in the free list */
    inbuf_free(&a, &pool);
    bufpool_destroy(&pool);
}

TEST(iov_copy_after_partial_writes)
{
    char x[3] = {'a', 'b', 'c'}, y[4] = {'d', 'e', 'f', 'g'}, out[8];
    uv_buf_t in[2] = {uv_buf_init(x, 3), uv_buf_init(y, 4)};
    CHECK_EQ_INT(iov_len(in, 2), 7);
    CHECK_EQ_INT(iov_copy(in, 2, 0, out), 7);
    CHECK(memcmp(out, "abcdefg", 7) == 0);
    CHECK_EQ_INT(iov_copy(in, 2, 2, out), 5);
    CHECK(memcmp(out, "cdefg", 5) == 0);
    CHECK_EQ_INT(iov_copy(in, 2, 5, out), 2);
    CHECK(memcmp(out, "fg", 2) == 0);
    CHECK_EQ_INT(iov_copy(in, 2, 7, out), 0);
}

TEST(bufpool_alloc_uses_blocks_only_for_mid_sizes)
{
    struct bufpool pool;
    REQUIRE(bufpool_init(&pool, 4) == 0);
    void *small = bufpool_alloc(&pool, 100), *mid = bufpool_alloc(&pool, 20000);
    void *big = bufpool_alloc(&pool, 3 * BUF_BLOCK);
    REQUIRE(small && mid && big);
    memset(big, 0, 3 * BUF_BLOCK);
    bufpool_release(&pool, small, 100);
    CHECK_EQ_INT(pool.n_free, 0);
    bufpool_release(&pool, mid, 20000);
    CHECK_EQ_INT(pool.n_free, 1);
    bufpool_release(&pool, big, 3 * BUF_BLOCK);
    CHECK_EQ_INT(pool.n_free, 1);
    bufpool_destroy(&pool);
}
