/* timeouts.c - see timeouts.h. */
#include "timeouts.h"

#include "loop.h"

static uint64_t duration(struct loop *l, int kind)
{
    const struct limits *lim = &l->cfg->limits;
    switch (kind) {
    case TO_HEADER:
        return (uint64_t)lim->header_timeout_ms;
    case TO_IDLE:
    case TO_SEND:
        return (uint64_t)lim->idle_timeout_ms;
    case TO_CONNECT:
        return (uint64_t)lim->upstream_connect_timeout_ms;
    case TO_RESPONSE:
        return (uint64_t)lim->upstream_timeout_ms;
    case TO_POOL:
        return UPSTREAM_IDLE_MS;
    case TO_NOW:
        return 0;
    default:
        return LINGER_MS;
    }
}

void timeout_clear(struct loop *l, struct tnode *n)
{
    if (n->kind == TO_NONE) return;
    struct tlist *ls = &l->to.lists[n->kind];
    if (n->prev)
        n->prev->next = n->next;
    else
        ls->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        ls->tail = n->prev;
    n->prev = n->next = NULL;
    n->kind = TO_NONE;
}

static void on_timer(uv_timer_t *t);

static void arm(struct timeouts *to, uint64_t at, uint64_t now)
{
    if (to->armed_at && to->armed_at <= at) return;
    to->armed_at = at;
    uv_timer_start(&to->timer, on_timer, at > now ? at - now : 0, 0);
}

/* TO_NOW: an idle handle, active while the list is not empty, runs the nodes at the start of
 * the next loop iteration (libuv 1.44 runs a timer restarted with 0 inside its own callback
 * again at once, so a timer could not promise that), those set while it runs the one after. */
static void on_now(uv_idle_t *h)
{
    struct timeouts *to = h->data;
    uint32_t pass = to->pass++;
    struct tnode *n;
    while ((n = to->lists[TO_NOW].head) && n->pass != pass + 1) {
        timeout_clear(to->l, n);
        to->fire[TO_NOW](n);
    }
    if (!to->lists[TO_NOW].head) uv_idle_stop(h);
}

void timeout_set(struct loop *l, struct tnode *n, int kind)
{
    uint64_t now = uv_now(&l->uv), deadline = now + duration(l, kind);
    if (n->kind == kind && n->deadline == deadline) return; /* refreshed within the same ms */
    timeout_clear(l, n);
    struct tlist *ls = &l->to.lists[kind];
    n->deadline = deadline;
    n->pass = l->to.pass;
    n->kind = (uint8_t)kind;
    n->prev = ls->tail;
    if (ls->tail)
        ls->tail->next = n;
    else
        ls->head = n;
    ls->tail = n;
    if (kind == TO_NOW) {
        if (!uv_is_closing((uv_handle_t *)&l->to.now)) uv_idle_start(&l->to.now, on_now);
    } else {
        arm(&l->to, n->deadline, now);
    }
}

static void on_timer(uv_timer_t *t)
{
    struct timeouts *to = t->data;
    struct loop *l = to->l;
    uint64_t now = uv_now(&l->uv), next = 0;
    to->armed_at = 0;
    for (int k = TO_NONE + 1; k < TO_KINDS; k++) {
        struct tnode *n;
        /* a reload may change a duration: a list is then briefly out of order, never lost */
        if (k == TO_NOW) continue; /* on_now's */
        /* every other kind lasts at least 1 ms: what a fire sets again is not due yet */
        while ((n = to->lists[k].head) && n->deadline <= now) {
            timeout_clear(l, n);
            to->fire[k](n);
        }
        if (n && (!next || n->deadline < next)) next = n->deadline;
    }
    if (next) arm(to, next, now);
}

void timeouts_init(struct loop *l)
{
    uv_timer_init(&l->uv, &l->to.timer);
    l->to.timer.data = &l->to;
    uv_idle_init(&l->uv, &l->to.now);
    l->to.now.data = &l->to;
    l->to.l = l;
}

void timeouts_close(struct loop *l)
{
    uv_close((uv_handle_t *)&l->to.timer, NULL);
    uv_close((uv_handle_t *)&l->to.now, NULL);
}
