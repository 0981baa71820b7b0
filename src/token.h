/* token.h - the one narrow interface between the data path and the token engine.
 *
 * A request asks for its route's provider token with token_get(). The answer is either
 * immediate (a cached token, or an error such as a disabled provider or a provider in backoff)
 * or delivered later through the token_wait the request embeds (no allocation). A successful
 * result carries a reference on a struct token: its header line stays valid until the request
 * gives the reference back with token_put(). */
#ifndef AUTHPROXY_TOKEN_H
#define AUTHPROXY_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct loop;
struct config;
struct strbuf;

/* A token's header line is TOKEN_HDR_PREFIX, the token itself, then CRLF. */
#define TOKEN_HDR_PREFIX "Authorization: Bearer "
#define TOKEN_HDR_PREFIX_LEN (sizeof TOKEN_HDR_PREFIX - 1)

struct token {
    int refs;
    uint64_t minted_ms, expires_ms, last_use_ms; /* loop time (uv_now) */
    char *header;                                /* "Authorization: Bearer <token>\r\n" */
    size_t header_len;
};

/* The token itself, inside its header line (not NUL-terminated). */
static inline const char *token_value(const struct token *t, size_t *len)
{
    *len = t->header_len - TOKEN_HDR_PREFIX_LEN - 2;
    return t->header + TOKEN_HDR_PREFIX_LEN;
}

struct token_result {
    int status;          /* 0 on success, else the HTTP status for the client */
    const char *error;   /* SPEC error code */
    char detail[256];    /* one sentence; never a secret */
    struct token *token; /* on success: a reference the caller must token_put() */
    int retry_after_s;   /* > 0: send Retry-After */
};

struct token_wait {
    void (*cb)(struct token_wait *w, const struct token_result *r);
    struct token_wait *next;
    bool outcome_only; /* set by the cache: token_refresh's waiters are told success or
                        * failure, given no token (and not counted as a use) */
};

/* Creates the per-loop cache for l->cfg's providers. */
int token_cache_init(struct loop *l);
/* SIGHUP: providers whose settings did not change keep their slot and token. */
int token_cache_reload(struct loop *l, struct config *cfg);
/* Cancels every transfer and closes the cache's handles (waiters must be gone); free it with
 * token_cache_free(l->tokens_closing) once the loop has run the close callbacks. */
void token_cache_close(struct loop *l);
struct token_cache;
void token_cache_free(struct token_cache *tc);

/* Returns 1 with *r filled when the answer is known now (a mint that fails at once included),
 * 0 when w->cb will be called later: never from inside this call. */
int token_get(struct loop *l, const struct config *cfg, int provider, struct token_wait *w,
              struct token_result *r);
/* Withdraws a pending wait (the request went away). */
void token_cancel(struct loop *l, struct token_wait *w);
void token_put(struct token *t);
/* The upstream answered 401 to t: forget it if it is still the cached token. */
void token_invalidate(struct loop *l, struct token *t);
/* Forces a mint (or joins the one in flight). Returns 0 when w->cb will be told its outcome
 * (status 0, no token, with outcome_only set; always after this returns), -1 with *r filled
 * when no mint can start or it failed at once. */
int token_refresh(struct loop *l, const struct config *cfg, int provider, struct token_wait *w,
                  struct token_result *r);
/* Revokes live tokens of providers with revoke_on_exit; done() when all answered, or when
 * budget_ms (what is left of limits.drain_ms) has passed, or at once when there is nothing to
 * revoke or no time left. */
void token_revoke_all(struct loop *l, uint64_t budget_ms, void (*done)(struct loop *l));
/* Is there a token that token_revoke_all would revoke? */
bool token_revoke_wanted(struct loop *l);
/* /readyz: every provider has a token or none has failed. */
bool token_ready(struct loop *l, const struct config *cfg);
/* /tokens and /metrics: appended to b, however long they get. Never a token. */
void token_status_json(struct loop *l, const struct config *cfg, struct strbuf *b);
void token_metrics(struct loop *l, const struct config *cfg, struct strbuf *b);

#endif
