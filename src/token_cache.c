/* token_cache.c - one token slot per provider: a state machine with single flight, proactive
 * refresh, sliding idle expiry, backoff with jitter, and revocation on exit.
 *
 *   EMPTY --request--> MINTING --ok--> VALID --refresh point--> REFRESHING --ok--> VALID
 *                         |  fail                                   | fail: keep serving the
 *                         v                                         v  old token, retry later
 *                      BACKOFF --request after backoff--> MINTING
 *   A 401 on the cached token, its expiry or idle expiry sends VALID back to EMPTY.
 *
 * slot_state() is the one place a slot changes state. Memory: the cache and its slots belong to
 * the loop; a slot is owned by exactly one list, tc->slots or (replaced by a reload while its
 * transfer runs) tc->retired, and freed once by whoever takes it off that list; struct token is
 * reference-counted (the slot holds one reference for the cached token, each request one for the
 * token it sent) and wiped when the last one goes. */
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "fetcher.h"
#include "log.h"
#include "loop.h"
#include "provider.h"
#include "strbuf.h"
#include "token.h"

#define BACKOFF_BASE_MS 1000
#define BACKOFF_CAP_MS 60000
#define EXPIRY_MARGIN_MS 1000 /* a token this close to expiry is not sent any more */

enum slot_state { TS_EMPTY, TS_MINTING, TS_VALID, TS_REFRESHING, TS_BACKOFF };
static const char *const state_names[] = {"empty", "minting", "valid", "refreshing", "backoff"};

struct token_slot {
    struct token_cache *tc;
    struct config *cfg; /* keeps p alive */
    const struct provider_config *p;
    struct token_slot *next_retired;
    bool retired; /* its provider changed or went away in a reload; freed when idle */
    enum slot_state state;
    struct token *cur;
    char *refresh_token; /* current (rotating) refresh token */
    struct token_wait *waiters;
    int n_waiters;
    struct fetch fe;
    enum mint_step step;
    bool in_flight, revoking;
    uint64_t deadline_ms, refresh_at_ms, backoff_until_ms;
    uv_timer_t timer;
    int fails;
    struct {
        int status;
        const char *error;
        char detail[200];
    } last;
    uint64_t mints_ok, mints_failed, hits, uses_since_mint, revokes;
};

struct token_cache {
    struct loop *l;
    struct config *cfg;
    struct fetcher fetcher;
    struct token_slot **slots; /* one per provider of cfg, same order */
    int n;
    struct token_slot *retired; /* replaced by a reload, finishing a transfer */
    int revokes_pending;
    void (*revoked)(struct loop *l);
    uv_timer_t revoke_timer;
};

static void mint_start(struct token_slot *s);
static void step_start(struct token_slot *s, enum mint_step step, const char *arg);

static uint64_t now_ms(struct token_slot *s)
{
    return uv_now(&s->tc->l->uv);
}

static void slot_state(struct token_slot *s, enum slot_state st)
{
    if (s->state != st)
        log_debug("provider %s: %s -> %s", s->p->name, state_names[s->state], state_names[st]);
    s->state = st;
}

void token_put(struct token *t)
{
    if (!t || --t->refs > 0) return;
    OPENSSL_cleanse(t->header, t->header_len);
    free(t->header);
    free(t);
}

/* A token this close to the end of a window (lifetime or idle) is not sent any more: a quarter
 * of the window, at most EXPIRY_MARGIN_MS. */
static uint64_t margin(uint64_t window_ms)
{
    return window_ms / 4 < EXPIRY_MARGIN_MS ? window_ms / 4 : EXPIRY_MARGIN_MS;
}

static bool live(const struct token_slot *s, const struct token *t, uint64_t now)
{
    if (!t) return false;
    if (now + margin(t->expires_ms - t->minted_ms) >= t->expires_ms) return false;
    uint64_t idle = (uint64_t)s->p->idle_timeout_s * 1000;
    if (idle && now + margin(idle) >= t->last_use_ms + idle) return false;
    return true;
}

static void drop_current(struct token_slot *s)
{
    token_put(s->cur);
    s->cur = NULL;
}

/* ---- answering waiters ---- */

static void fill_error(struct token_slot *s, struct token_result *r, uint64_t now)
{
    r->status = s->last.status;
    r->error = s->last.error;
    snprintf(r->detail, sizeof r->detail, "%s", s->last.detail);
    r->token = NULL;
    r->retry_after_s = 0;
    if (s->backoff_until_ms > now)
        r->retry_after_s = (int)((s->backoff_until_ms - now + 999) / 1000);
}

static void fill_token(struct token_slot *s, struct token_result *r, uint64_t now)
{
    memset(r, 0, sizeof *r);
    r->token = s->cur;
    s->cur->refs++;
    s->cur->last_use_ms = now; /* sliding idle expiry */
    s->uses_since_mint++;
}

static void answer_waiters(struct token_slot *s, bool ok)
{
    struct token_wait *w = s->waiters;
    s->waiters = NULL;
    s->n_waiters = 0;
    uint64_t now = now_ms(s);
    while (w) {
        struct token_wait *next = w->next;
        w->next = NULL;
        struct token_result r;
        if (ok && s->cur && w->outcome_only)
            memset(&r, 0, sizeof r);
        else if (ok && s->cur)
            fill_token(s, &r, now);
        else
            fill_error(s, &r, now);
        w->cb(w, &r);
        w = next;
    }
}

/* ---- timers ---- */

static void on_slot_timer(uv_timer_t *t)
{
    struct token_slot *s = t->data;
    uint64_t now = now_ms(s);
    if (s->in_flight || s->retired) return;
    if (s->state == TS_VALID && live(s, s->cur, now) && s->uses_since_mint > 0) {
        /* refresh in the background while the current token keeps serving */
        slot_state(s, TS_REFRESHING);
        mint_start(s);
    }
}

static void arm_refresh(struct token_slot *s)
{
    struct token *t = s->cur;
    uint64_t life = t->expires_ms - t->minted_ms;
    uint64_t before = (uint64_t)s->p->refresh_before_s * 1000;
    if (before > life / 2) before = life / 2;
    s->refresh_at_ms = t->expires_ms - before;
    uint64_t now = now_ms(s);
    uv_timer_start(&s->timer, on_slot_timer, s->refresh_at_ms > now ? s->refresh_at_ms - now : 0,
                   0);
}

/* ---- minting ---- */

static void mint_succeeded(struct token_slot *s, struct mint_result *mr)
{
    const struct provider_config *p = s->p;
    uint64_t now = now_ms(s);
    int64_t life = mr->lifetime_ms > 0 ? mr->lifetime_ms : p->default_ttl_s * 1000;
    if (p->max_lifetime_s > 0 && life > p->max_lifetime_s * 1000) life = p->max_lifetime_s * 1000;
    struct token *t = calloc(1, sizeof *t);
    size_t vl = strlen(mr->access_token);
    if (t) t->header = malloc(vl + 32);
    if (!t || !t->header) {
        free(t);
        s->last.status = 503;
        s->last.error = "token_unavailable";
        snprintf(s->last.detail, sizeof s->last.detail, "provider %s: out of memory", p->name);
        slot_state(s, s->cur ? TS_VALID : TS_BACKOFF);
        answer_waiters(s, false);
        return;
    }
    t->refs = 1;
    t->minted_ms = t->last_use_ms = now;
    t->expires_ms = now + (uint64_t)life;
    t->header_len = (size_t)sprintf(t->header, "Authorization: Bearer %s\r\n", mr->access_token);
    if (mr->refresh_token) {
        if (s->refresh_token) {
            OPENSSL_cleanse(s->refresh_token, strlen(s->refresh_token));
            free(s->refresh_token);
        }
        s->refresh_token = mr->refresh_token; /* rotation: the new one replaces the old */
        mr->refresh_token = NULL;
    }
    char fp[13];
    log_fingerprint(mr->access_token, vl, fp);
    log_info("provider %s: token %s minted, expires in %lld ms", p->name, fp, (long long)life);
    drop_current(s);
    s->cur = t;
    s->fails = 0;
    s->backoff_until_ms = 0;
    s->mints_ok++;
    s->uses_since_mint = 0;
    slot_state(s, TS_VALID);
    arm_refresh(s);
    answer_waiters(s, true);
}

static void mint_failed(struct token_slot *s, int status, const char *code, const char *detail,
                        int retry_after_s)
{
    uint64_t now = now_ms(s);
    s->mints_failed++;
    s->fails++;
    uint64_t delay = BACKOFF_BASE_MS;
    for (int i = 1; i < s->fails && delay < BACKOFF_CAP_MS; i++)
        delay *= 2;
    if (delay > BACKOFF_CAP_MS) delay = BACKOFF_CAP_MS;
    delay = delay / 2 + (uint64_t)rand() % (delay / 2 + 1); /* jitter: [d/2, d] */
    if (retry_after_s > 0 && (uint64_t)retry_after_s * 1000 > delay)
        delay = (uint64_t)retry_after_s * 1000;
    s->backoff_until_ms = now + delay;
    s->last.status = status;
    s->last.error = code;
    snprintf(s->last.detail, sizeof s->last.detail, "%s", detail);
    log_warn("provider %s: token request failed: %s (next attempt in %llu ms)", s->p->name, detail,
             (unsigned long long)delay);
    if (live(s, s->cur, now)) {
        /* a failed background refresh: keep serving, try again after the backoff */
        slot_state(s, TS_VALID);
        if (s->backoff_until_ms < s->cur->expires_ms)
            uv_timer_start(&s->timer, on_slot_timer, delay, 0);
    } else {
        drop_current(s);
        slot_state(s, TS_BACKOFF);
    }
    answer_waiters(s, false);
}

static void slot_free(struct token_slot *s);

/* A refresh (not the deadline) failed. Refused: the refresh token is dropped and the provider's
 * own grant starts over (a new code, or a client credentials grant: servers that hand refresh
 * tokens out with those need not honour them). Failed otherwise: a password_code provider runs
 * the code flow in the same mint, keeping the refresh token (SPEC, eptura: "fall back to a new
 * code when refresh fails"). True when the next step started. */
static bool refresh_fallback(struct token_slot *s, bool refused, const char *why)
{
    const struct provider_config *p = s->p;
    bool code = p->grant_type == GRANT_PASSWORD_CODE;
    if (s->step != STEP_REFRESH || p->grant_type == GRANT_REFRESH_TOKEN || (!refused && !code))
        return false;
    log_info("provider %s: refresh %s (%s), %s", p->name, refused ? "refused" : "failed", why,
             code ? "requesting a new code" : "minting with the client credentials");
    if (refused) {
        OPENSSL_cleanse(s->refresh_token, strlen(s->refresh_token));
        free(s->refresh_token);
        s->refresh_token = NULL;
    }
    step_start(s, code ? STEP_CODE : STEP_GRANT, NULL);
    return true;
}

static void fetch_done(struct fetch *fe)
{
    struct token_slot *s = container_of(fe, struct token_slot, fe);
    const struct provider_config *p = s->p;
    char d[200];
    s->in_flight = false;
    if (s->revoking) {
        s->revoking = false;
        if (fe->result == CURLE_OK && fe->status >= 200 && fe->status < 300)
            log_info("provider %s: token revoked", p->name);
        else
            log_warn("provider %s: revocation failed (%s, HTTP %ld)", p->name,
                     curl_easy_strerror(fe->result), fe->status);
        fetch_reset(fe);
        struct token_cache *tc = s->tc;
        if (--tc->revokes_pending == 0 && tc->revoked) {
            uv_timer_stop(&tc->revoke_timer);
            void (*cb)(struct loop *) = tc->revoked;
            tc->revoked = NULL;
            cb(tc->l);
        }
        return;
    }
    if (fe->result != CURLE_OK) {
        int retry = fe->retry_after_s;
        if (fe->too_big) {
            snprintf(d, sizeof d, "provider %s: the token endpoint's answer is larger than 1 MiB",
                     p->name);
            fetch_reset(fe);
            return mint_failed(s, 503, "token_unavailable", d, retry);
        }
        if (fe->result == CURLE_OPERATION_TIMEDOUT) {
            snprintf(d, sizeof d, "provider %s: no token within %lld ms", p->name,
                     (long long)s->tc->cfg->limits.token_timeout_ms);
            fetch_reset(fe);
            return mint_failed(s, 504, "token_timeout", d, retry);
        }
        const char *why = curl_easy_strerror(fe->result);
        snprintf(d, sizeof d, "provider %s: cannot reach the token endpoint: %s", p->name, why);
        fetch_reset(fe);
        if (refresh_fallback(s, false, why)) return;
        return mint_failed(s, 503, "token_unavailable", d, retry);
    }
    struct mint_result mr;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t wall = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    provider_parse(p, s->step, fe->status, fe->body, fe->len, wall, &mr);
    int retry = fe->retry_after_s;
    fetch_reset(fe);
    enum mint_step step = s->step;
    if (mr.kind == MINT_OK) {
        if (step == STEP_CODE) {
            step_start(s, STEP_EXCHANGE, mr.code);
            mint_result_free(&mr);
            return;
        }
        mint_succeeded(s, &mr);
        mint_result_free(&mr);
        return;
    }
    bool refused = mr.kind == MINT_REJECTED;
    mint_result_free(&mr);
    if (refresh_fallback(s, refused, refused ? mr.error : mr.detail)) return;
    if (refused)
        mint_failed(s, 502, "token_rejected", mr.detail, retry);
    else
        mint_failed(s, 503, "token_unavailable", mr.detail, retry);
}

/* A retired slot is freed once its last transfer has answered its waiters, by whoever takes
 * it off the retired list: here, or token_cache_close (which fetch_done may have run, through
 * the end of the exit-time revocations) - never both. */
static void on_fetch_done(struct fetch *fe)
{
    struct token_slot *s = container_of(fe, struct token_slot, fe);
    fetch_done(fe);
    if (!s->retired || s->in_flight) return;
    struct token_cache *tc = s->tc;
    for (struct token_slot **pp = &tc->retired; *pp; pp = &(*pp)->next_retired)
        if (*pp == s) {
            *pp = s->next_retired;
            slot_free(s);
            return;
        }
}

static void step_start(struct token_slot *s, enum mint_step step, const char *arg)
{
    char d[200];
    uint64_t now = now_ms(s);
    s->step = step;
    if (now >= s->deadline_ms) {
        snprintf(d, sizeof d, "provider %s: no token within %lld ms", s->p->name,
                 (long long)s->tc->cfg->limits.token_timeout_ms);
        return mint_failed(s, 504, "token_timeout", d, 0);
    }
    if (provider_build(s->p, step, arg, &s->fe.call) < 0) {
        snprintf(d, sizeof d, "provider %s: cannot build the token request", s->p->name);
        return mint_failed(s, 503, "token_unavailable", d, 0);
    }
    s->fe.done = on_fetch_done;
    if (fetcher_start(&s->tc->fetcher, &s->fe, (long)(s->deadline_ms - now)) < 0) {
        fetch_reset(&s->fe);
        snprintf(d, sizeof d, "provider %s: cannot start the token request", s->p->name);
        return mint_failed(s, 503, "token_unavailable", d, 0);
    }
    s->in_flight = true;
}

static void mint_start(struct token_slot *s)
{
    const struct provider_config *p = s->p;
    s->deadline_ms = now_ms(s) + (uint64_t)s->tc->cfg->limits.token_timeout_ms;
    uv_timer_stop(&s->timer);
    if (s->refresh_token)
        step_start(s, STEP_REFRESH, s->refresh_token);
    else if (p->grant_type == GRANT_PASSWORD_CODE)
        step_start(s, STEP_CODE, NULL);
    else if (p->grant_type == GRANT_CLIENT_CREDENTIALS)
        step_start(s, STEP_GRANT, NULL);
    else {
        char d[200];
        snprintf(d, sizeof d, "provider %s: no refresh token left to start from", p->name);
        mint_failed(s, 502, "token_rejected", d, 0);
    }
}

/* ---- the interface ---- */

/* The slot serving cfg's provider (cfg may be an older snapshot than the cache's). */
static struct token_slot *slot_of(struct loop *l, const struct config *cfg, int provider)
{
    struct token_cache *tc = l->tokens;
    if (!tc || provider < 0 || provider >= cfg->n_providers) return NULL;
    const char *name = cfg->providers[provider].name;
    if (provider < tc->n && (tc->slots[provider]->p == &cfg->providers[provider] ||
                             strcmp(tc->slots[provider]->p->name, name) == 0))
        return tc->slots[provider];
    for (int i = 0; i < tc->n; i++)
        if (strcmp(tc->slots[i]->p->name, name) == 0) return tc->slots[i];
    return NULL;
}

static void add_waiter(struct token_slot *s, struct token_wait *w, bool outcome_only)
{
    w->outcome_only = outcome_only;
    w->next = s->waiters;
    s->waiters = w;
    s->n_waiters++;
}

int token_get(struct loop *l, const struct config *cfg, int provider, struct token_wait *w,
              struct token_result *r)
{
    const struct provider_config *p = &cfg->providers[provider];
    r->status = r->retry_after_s = 0; /* not a memset: detail[] is written only with an error */
    r->error = NULL;
    r->token = NULL;
    r->detail[0] = 0;
    if (p->disabled) {
        r->status = 502;
        r->error = "provider_disabled";
        snprintf(r->detail, sizeof r->detail, "provider %s is disabled: %s", p->name,
                 p->disabled_reason ? p->disabled_reason : "a setting is missing");
        return 1;
    }
    struct token_slot *s = slot_of(l, cfg, provider);
    if (!s || s->p->disabled) {
        r->status = 503;
        r->error = "token_unavailable";
        snprintf(r->detail, sizeof r->detail, "provider %s is not configured any more", p->name);
        return 1;
    }
    uint64_t now = now_ms(s);
    if (s->cur && !live(s, s->cur, now)) {
        drop_current(s);
        if (s->state == TS_VALID) slot_state(s, TS_EMPTY);
        if (s->state == TS_REFRESHING) slot_state(s, TS_MINTING);
    }
    if (s->cur) {
        s->hits++;
        fill_token(s, r, now);
        return 1;
    }
    if (s->state == TS_BACKOFF && now < s->backoff_until_ms) {
        fill_error(s, r, now);
        return 1;
    }
    if (s->n_waiters >= cfg->limits.max_connections) {
        r->status = 503;
        r->error = "token_unavailable";
        snprintf(r->detail, sizeof r->detail, "provider %s: too many requests waiting", p->name);
        return 1;
    }
    if (!s->in_flight) {
        slot_state(s, TS_MINTING);
        mint_start(s);
        if (!s->in_flight) { /* failed at once: answered here, never through w->cb inside */
            fill_error(s, r, now_ms(s));
            return 1;
        }
    }
    add_waiter(s, w, false);
    return 0;
}

static bool remove_waiter(struct token_slot *s, struct token_wait *w)
{
    for (struct token_wait **pp = &s->waiters; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            s->n_waiters--;
            w->next = NULL;
            return true;
        }
    return false;
}

void token_cancel(struct loop *l, struct token_wait *w)
{
    struct token_cache *tc = l->tokens;
    if (!tc) return;
    for (int i = 0; i < tc->n; i++)
        if (remove_waiter(tc->slots[i], w)) return;
    for (struct token_slot *s = tc->retired; s; s = s->next_retired)
        if (remove_waiter(s, w)) return;
}

void token_invalidate(struct loop *l, struct token *t)
{
    struct token_cache *tc = l->tokens;
    if (!tc) return;
    for (int i = 0; i < tc->n; i++) {
        struct token_slot *s = tc->slots[i];
        if (s->cur != t) continue; /* not (any more) the cached token: nothing to do */
        log_info("provider %s: upstream refused the cached token, minting a new one", s->p->name);
        drop_current(s);
        uv_timer_stop(&s->timer);
        slot_state(s, s->in_flight ? TS_MINTING : TS_EMPTY);
        return;
    }
}

int token_refresh(struct loop *l, const struct config *cfg, int provider, struct token_wait *w,
                  struct token_result *r)
{
    struct token_slot *s = slot_of(l, cfg, provider);
    const struct provider_config *p = &cfg->providers[provider];
    memset(r, 0, sizeof *r);
    if (p->disabled || !s) {
        struct token_wait dummy = {0};
        token_get(l, cfg, provider, &dummy, r);
        return -1;
    }
    if (s->revoking) { /* shutting down: no new mint */
        r->status = 503;
        r->error = "token_unavailable";
        snprintf(r->detail, sizeof r->detail, "provider %s: shutting down", p->name);
        return -1;
    }
    if (!s->in_flight) {
        slot_state(s, s->cur ? TS_REFRESHING : TS_MINTING);
        s->backoff_until_ms = 0;
        mint_start(s);
        if (!s->in_flight) { /* failed at once: answered here, as token_get does */
            fill_error(s, r, now_ms(s));
            return -1;
        }
    }
    add_waiter(s, w, true);
    return 0;
}

static void revoke_finished(struct token_cache *tc)
{
    uv_timer_stop(&tc->revoke_timer);
    tc->revokes_pending = 0;
    if (tc->revoked) {
        void (*cb)(struct loop *) = tc->revoked;
        tc->revoked = NULL;
        cb(tc->l);
    }
}

static void on_revoke_timeout(uv_timer_t *t)
{
    struct token_cache *tc = t->data;
    for (int i = 0; i < tc->n; i++) {
        struct token_slot *s = tc->slots[i];
        if (!s->revoking) continue;
        fetcher_cancel(&s->fe);
        fetch_reset(&s->fe);
        s->revoking = s->in_flight = false;
        log_warn("provider %s: revocation did not finish in time", s->p->name);
    }
    revoke_finished(tc);
}

static void stop_transfer(struct token_slot *s)
{
    if (!s->in_flight) return;
    fetcher_cancel(&s->fe);
    fetch_reset(&s->fe);
    s->in_flight = s->revoking = false;
}

void token_revoke_all(struct loop *l, uint64_t budget_ms, void (*done)(struct loop *l))
{
    struct token_cache *tc = l->tokens;
    if (!tc) return done(l);
    tc->revoked = done;
    tc->revokes_pending = 0;
    for (struct token_slot *s = tc->retired; s; s = s->next_retired)
        stop_transfer(s);
    for (int i = 0; i < tc->n; i++) {
        struct token_slot *s = tc->slots[i];
        stop_transfer(s); /* a mint in progress is abandoned */
        if (!s->cur || !s->p->revoke_on_exit || !s->p->revoke_url) continue;
        if (budget_ms == 0) {
            log_warn("provider %s: token not revoked: the drain used all of limits.drain_ms",
                     s->p->name);
            continue;
        }
        const char *hv = s->cur->header + 22; /* after "Authorization: Bearer " */
        size_t vl = s->cur->header_len - 24;
        char *v = malloc(vl + 1);
        if (!v) continue;
        memcpy(v, hv, vl);
        v[vl] = 0;
        int rc = provider_build(s->p, STEP_REVOKE, v, &s->fe.call);
        OPENSSL_cleanse(v, vl);
        free(v);
        if (rc < 0) continue;
        s->fe.done = on_fetch_done;
        if (fetcher_start(&tc->fetcher, &s->fe, (long)budget_ms) < 0) {
            fetch_reset(&s->fe);
            continue;
        }
        s->revoking = s->in_flight = true;
        s->revokes++;
        tc->revokes_pending++;
    }
    if (tc->revokes_pending == 0) return revoke_finished(tc);
    uv_timer_start(&tc->revoke_timer, on_revoke_timeout, budget_ms, 0);
}

bool token_revoke_wanted(struct loop *l)
{
    struct token_cache *tc = l->tokens;
    for (int i = 0; tc && i < tc->n; i++) {
        const struct token_slot *s = tc->slots[i];
        if (s->cur && s->p->revoke_on_exit && s->p->revoke_url) return true;
    }
    return false;
}

bool token_ready(struct loop *l, const struct config *cfg)
{
    struct token_cache *tc = l->tokens;
    (void)cfg;
    if (!tc) return true;
    bool all_have = true, any_failed = false;
    for (int i = 0; i < tc->n; i++) {
        struct token_slot *s = tc->slots[i];
        if (s->p->disabled) continue;
        if (!s->cur) all_have = false;
        if (s->state == TS_BACKOFF) any_failed = true;
    }
    return all_have || !any_failed;
}

static int64_t wall_ms(struct loop *l, uint64_t loop_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t wall = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    return wall + ((int64_t)loop_ms - (int64_t)uv_now(&l->uv));
}

void token_status_json(struct loop *l, const struct config *cfg, struct strbuf *b)
{
    strbuf_add(b, "{", 1);
    for (int i = 0; i < cfg->n_providers; i++) {
        const struct provider_config *p = &cfg->providers[i];
        struct token_slot *s = slot_of(l, cfg, i);
        const char *st = p->disabled ? "disabled" : s ? state_names[s->state] : "empty";
        strbuf_printf(b, "%s\"", i ? ", " : "");
        strbuf_json(b, p->name);
        strbuf_printf(b, "\": {\"state\": \"%s\"", st);
        if (s && s->cur) {
            uint64_t now = uv_now(&l->uv);
            strbuf_printf(b, ", \"expires_at\": %.3f, \"age\": %.3f, \"uses\": %llu",
                          (double)wall_ms(l, s->cur->expires_ms) / 1000.0,
                          (double)(now - s->cur->minted_ms) / 1000.0,
                          (unsigned long long)s->uses_since_mint);
        } else {
            strbuf_printf(b, ", \"expires_at\": null, \"age\": null, \"uses\": 0");
        }
        strbuf_printf(b, ", \"mints\": %llu, \"failures\": %llu, \"last_error\": ",
                      s ? (unsigned long long)s->mints_ok : 0ULL,
                      s ? (unsigned long long)s->mints_failed : 0ULL);
        if (s && s->last.error) { /* the detail holds no secret */
            strbuf_printf(b, "{\"error\": \"");
            strbuf_json(b, s->last.error);
            strbuf_printf(b, "\", \"detail\": \"");
            strbuf_json(b, s->last.detail);
            strbuf_printf(b, "\"}");
        } else {
            strbuf_printf(b, "null");
        }
        strbuf_printf(b, "}");
    }
    strbuf_printf(b, "}\n");
}

void token_metrics(struct loop *l, const struct config *cfg, struct strbuf *b)
{
    struct token_cache *tc = l->tokens;
    if (!tc) return;
    strbuf_printf(b, "# TYPE authproxy_token_mints_total counter\n"
                     "# TYPE authproxy_token_cache_hits_total counter\n");
    for (int i = 0; i < cfg->n_providers; i++) {
        struct token_slot *s = slot_of(l, cfg, i);
        if (!s) continue;
        const char *nm = s->p->name;
        strbuf_printf(b,
                      "authproxy_token_mints_total{provider=\"%s\",outcome=\"ok\"} %llu\n"
                      "authproxy_token_mints_total{provider=\"%s\",outcome=\"error\"} %llu\n"
                      "authproxy_token_cache_hits_total{provider=\"%s\"} %llu\n",
                      nm, (unsigned long long)s->mints_ok, nm, (unsigned long long)s->mints_failed,
                      nm, (unsigned long long)s->hits);
    }
}

/* ---- slots and the cache ---- */

static struct token_slot *slot_new(struct token_cache *tc, struct config *cfg, int idx)
{
    struct token_slot *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->tc = tc;
    s->cfg = config_ref(cfg);
    s->p = &cfg->providers[idx];
    uv_timer_init(&tc->l->uv, &s->timer);
    s->timer.data = s;
    if (s->p->refresh_token && !s->p->disabled) s->refresh_token = strdup(s->p->refresh_token);
    return s;
}

static void on_slot_closed(uv_handle_t *h)
{
    struct token_slot *s = h->data;
    config_unref(s->cfg);
    free(s);
}

static void slot_free(struct token_slot *s)
{
    stop_transfer(s);
    fetch_reset(&s->fe);
    drop_current(s);
    if (s->refresh_token) {
        OPENSSL_cleanse(s->refresh_token, strlen(s->refresh_token));
        free(s->refresh_token);
        s->refresh_token = NULL;
    }
    uv_close((uv_handle_t *)&s->timer, on_slot_closed);
}

/* Builds the slots for cfg; a slot of old whose provider has the very same settings carries
 * over with its token. The other old slots retire (freed when their transfer ends). On failure
 * (out of memory) nothing has changed. */
static int slots_build(struct token_cache *tc, struct config *cfg)
{
    int n = cfg->n_providers;
    struct token_slot **slots = calloc((size_t)(n ? n : 1), sizeof *slots);
    int *from = calloc((size_t)(n ? n : 1), sizeof *from); /* the old slot carried over, or -1 */
    bool *used = calloc((size_t)(tc->n ? tc->n : 1), sizeof *used); /* old slots carried over */
    if (!slots || !from || !used) goto fail;
    for (int i = 0; i < n; i++) {
        const struct provider_config *p = &cfg->providers[i];
        from[i] = -1;
        for (int j = 0; j < tc->n && from[i] < 0; j++) {
            const struct token_slot *o = tc->slots[j];
            if (!used[j] && strcmp(o->p->name, p->name) == 0 && provider_config_equal(o->p, p)) {
                from[i] = j;
                used[j] = true;
            }
        }
        if (from[i] < 0 && !(slots[i] = slot_new(tc, cfg, i))) goto fail;
    }
    for (int i = 0; i < n; i++) { /* nothing can fail from here on */
        if (from[i] < 0) continue;
        struct token_slot *o = tc->slots[from[i]];
        tc->slots[from[i]] = NULL;
        config_unref(o->cfg);
        o->cfg = config_ref(cfg);
        o->p = &cfg->providers[i];
        slots[i] = o;
    }
    for (int j = 0; j < tc->n; j++) {
        struct token_slot *o = tc->slots[j];
        if (!o) continue;
        if (o->in_flight) {
            o->retired = true;
            o->next_retired = tc->retired;
            tc->retired = o;
        } else {
            slot_free(o);
        }
    }
    free(from);
    free(used);
    free(tc->slots);
    tc->slots = slots;
    tc->n = n;
    return 0;
fail:
    for (int i = 0; slots && i < n; i++)
        if (slots[i]) slot_free(slots[i]); /* only new ones are in slots yet */
    free(slots);
    free(from);
    free(used);
    return -1;
}

int token_cache_init(struct loop *l)
{
    struct token_cache *tc = calloc(1, sizeof *tc);
    if (!tc) return -1;
    tc->l = l;
    tc->cfg = config_ref(l->cfg);
    if (fetcher_init(&tc->fetcher, &l->uv, tc->cfg->ca_file) < 0 || slots_build(tc, tc->cfg) < 0) {
        config_unref(tc->cfg);
        free(tc);
        return -1;
    }
    uv_timer_init(&l->uv, &tc->revoke_timer);
    tc->revoke_timer.data = tc;
    l->tokens = tc;
    return 0;
}

int token_cache_reload(struct loop *l, struct config *cfg)
{
    struct token_cache *tc = l->tokens;
    if (!tc) return -1;
    if (fetcher_set_ca(&tc->fetcher, cfg->ca_file) < 0 || slots_build(tc, cfg) < 0) return -1;
    config_unref(tc->cfg);
    tc->cfg = config_ref(cfg);
    return 0;
}

void token_cache_close(struct loop *l)
{
    struct token_cache *tc = l->tokens;
    if (!tc) return;
    for (int i = 0; i < tc->n; i++) {
        slot_free(tc->slots[i]);
        tc->slots[i] = NULL;
    }
    tc->n = 0;
    while (tc->retired) {
        struct token_slot *s = tc->retired;
        tc->retired = s->next_retired;
        slot_free(s);
    }
    uv_close((uv_handle_t *)&tc->revoke_timer, NULL);
    fetcher_close(&tc->fetcher);
    /* the handles close on the next loop turn: token_cache_free after it */
    l->tokens = NULL;
    l->tokens_closing = tc;
}

void token_cache_free(struct token_cache *tc)
{
    if (!tc) return;
    config_unref(tc->cfg);
    free(tc->slots);
    free(tc);
}
