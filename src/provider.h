/* provider.h - what a provider's token endpoint is sent and how its answer is read: request
 * building per grant and step (form, JSON or x- headers, Basic or body client auth, renamed
 * parameters, extra params) and response parsing (RFC 6749 success and error bodies, expires_in
 * in s or ms, JWT exp, the presets' status codes).
 *
 * Pure functions over a struct provider_config: no I/O, no loop. A struct token_call owns its
 * header list and body; a struct mint_result owns its strings (secrets: freed with wiping). */
#ifndef AUTHPROXY_PROVIDER_H
#define AUTHPROXY_PROVIDER_H

#include <curl/curl.h>
#include <stdint.h>

#include "config.h"

#define TOKEN_RESPONSE_MAX (1024 * 1024) /* a larger answer is a failed mint */

enum mint_step {
    STEP_GRANT,    /* client_credentials */
    STEP_CODE,     /* password_code: ask for a code with the user's credentials */
    STEP_EXCHANGE, /* authorization_code: trade the code for tokens */
    STEP_REFRESH,  /* refresh_token */
    STEP_REVOKE,   /* RFC 7009 (or the preset's variant) */
};

struct token_call {
    const char *url; /* borrowed from the provider configuration */
    struct curl_slist *headers;
    char *body;
    size_t body_len;
};

enum mint_kind {
    MINT_OK,          /* access token (or code, for STEP_CODE; nothing for STEP_REVOKE) */
    MINT_REJECTED,    /* the endpoint refused: 502 token_rejected */
    MINT_UNAVAILABLE, /* 5xx, 429, garbage, too large, bad lifetime: 503 token_unavailable */
};

struct mint_result {
    enum mint_kind kind;
    char *access_token, *refresh_token, *code;
    int64_t lifetime_ms; /* -1: the response gave none (caller uses default_ttl_s) */
    char error[64];      /* the provider's RFC 6749 error code, sanitised */
    char detail[200];    /* one sentence for the client; never a secret */
};

/* Builds the request for step. arg is the code (STEP_EXCHANGE), the refresh token
 * (STEP_REFRESH) or the access token to revoke (STEP_REVOKE). Returns 0 or -1 (no memory, or
 * the step needs a URL the provider lacks). */
int provider_build(const struct provider_config *p, enum mint_step step, const char *arg,
                   struct token_call *out);
void token_call_free(struct token_call *c);

/* Reads the endpoint's answer to step. now_ms is the current Unix time in ms (for JWT exp). */
void provider_parse(const struct provider_config *p, enum mint_step step, long status,
                    const char *body, size_t len, int64_t now_ms, struct mint_result *out);
void mint_result_free(struct mint_result *r);

/* The exp claim of a JWT (no signature check), or -1 when the token is not a JWT with exp. */
int64_t jwt_exp(const char *token);

/* application/x-www-form-urlencoded (RFC 3986 unreserved kept, the rest %XX). Returns the
 * length written (without NUL), or -1 when out is too small. */
int form_encode(const char *in, char *out, size_t cap);

#endif
