/* trim.c - gives memory back after a burst.
 *
 * Every TRIM_MS the loop frees the pooled exchanges and I/O blocks that the busiest moment of
 * the last period did not need (under steady load that is none), and when that freed heap
 * memory, malloc_trim(0) hands the heap's free pages back to the system: a burst of 500
 * requests leaves the process as small as before it. The timer does not keep the loop alive.
 * Memory: owns nothing; frees through proxy.c and buf.c. */
#include "trim.h"

#include <malloc.h>

#include "loop.h"
#include "proxy.h"

#define TRIM_MS 200

#define TRIM_SLACK 32 /* spare objects kept beyond the period's peak: steady load trims nothing */

static void on_trim(uv_timer_t *t)
{
    struct loop *l = t->data;
    int keep = l->peak_ex - l->active_ex + TRIM_SLACK;
    bool heap = l->n_free_ex > keep;
    if (heap) proxy_free_list_trim(l, keep);
    l->peak_ex = l->active_ex;
    bufpool_trim(&l->pool, l->pool.peak_out - l->pool.out + TRIM_SLACK);
    l->pool.peak_out = l->pool.out;
    if (heap) malloc_trim(0);
}

void trim_start(struct loop *l)
{
    uv_timer_init(&l->uv, &l->trim_timer);
    l->trim_timer.data = l;
    uv_timer_start(&l->trim_timer, on_trim, TRIM_MS, TRIM_MS);
    uv_unref((uv_handle_t *)&l->trim_timer);
}

void trim_stop(struct loop *l)
{
    uv_timer_stop(&l->trim_timer);
    uv_close((uv_handle_t *)&l->trim_timer, NULL);
}
