/* test_provider.c - presets as token requests on the wire, and token responses read back:
 * EPC (Basic, 201), Eptura (x- headers, code step, milliseconds, rotating refresh token,
 * x-token revocation), Enable (form auth, dealtrack_registration_id, JWT exp), RFC 6749 errors
 * and the answers that must never become a token; the token endpoint's Retry-After. */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fetcher.h"
#include "provider.h"
#include "unit.h"

static struct config *load(const char *providers)
{
    char json[4096], err[CONFIG_ERR_MAX];
    snprintf(json, sizeof json,
             "{\"listen\": [\"127.0.0.1:1\"], \"providers\": {%s}, \"routes\": "
             "[{\"host\": \"x.test\"}]}",
             providers);
    struct config *c = config_parse(json, false, NULL, err);
    if (!c) fprintf(stderr, "config: %s\n", err);
    return c;
}

static bool has_header(const struct token_call *tc, const char *line)
{
    for (struct curl_slist *s = tc->headers; s; s = s->next)
        if (strcmp(s->data, line) == 0) return true;
    return false;
}

static bool has_header_prefix(const struct token_call *tc, const char *prefix)
{
    for (struct curl_slist *s = tc->headers; s; s = s->next)
        if (strncmp(s->data, prefix, strlen(prefix)) == 0) return true;
    return false;
}

TEST(epc_basic_auth_form_and_201)
{
    struct config *c = load("\"epc\": {\"preset\": \"epc\", \"token_url\": "
                            "\"https://api.example/oauth2/v1/token\", \"client_id\": \"id 1\", "
                            "\"client_secret\": \"s:ec\"}");
    REQUIRE(c);
    const struct provider_config *p = &c->providers[0];
    struct token_call tc;
    REQUIRE(provider_build(p, STEP_GRANT, NULL, &tc) == 0);
    CHECK_STR(tc.url, "https://api.example/oauth2/v1/token");
    CHECK_STR(tc.body, "grant_type=client_credentials&scope=pc%20pcapi");
    /* EPC's documents use curl -u: id and secret as they are, base64("id 1:s:ec") */
    CHECK(has_header(&tc, "Authorization: Basic aWQgMTpzOmVj"));
    CHECK(has_header(&tc, "Content-Type: application/x-www-form-urlencoded"));
    CHECK(strstr(tc.body, "s%3Aec") == NULL); /* the secret is not also in the body */
    token_call_free(&tc);

    struct mint_result r;
    const char *ok = "{\"access_token\": \"5zs6RdBtEHRFFbhziXMxmsZKtWtn\", \"token_type\": "
                     "\"Bearer\", \"expires_in\": 7200}";
    provider_parse(p, STEP_GRANT, 201, ok, strlen(ok), 1000000, &r);
    CHECK_EQ_INT(r.kind, MINT_OK);
    CHECK_STR(r.access_token, "5zs6RdBtEHRFFbhziXMxmsZKtWtn");
    CHECK_EQ_INT(r.lifetime_ms, 7200000);
    mint_result_free(&r);
    CHECK_EQ_INT(p->idle_timeout_s, 900);
    CHECK_EQ_INT(p->max_lifetime_s, 7200);
    config_unref(c);
}

TEST(epc_form_client_auth)
{
    struct config *c = load("\"epc\": {\"preset\": \"epc\", \"client_auth\": \"body\", "
                            "\"token_url\": \"https://a/t\", \"client_id\": \"cid\", "
                            "\"client_secret\": \"sec\"}");
    REQUIRE(c);
    struct token_call tc;
    REQUIRE(provider_build(&c->providers[0], STEP_GRANT, NULL, &tc) == 0);
    CHECK_STR(tc.body,
              "grant_type=client_credentials&scope=pc%20pcapi&client_id=cid&client_secret=sec");
    CHECK(!has_header_prefix(&tc, "Authorization:"));
    token_call_free(&tc);
    config_unref(c);
}

TEST(rfc6749_basic_auth_is_form_encoded)
{
    struct config *c = load("\"g\": {\"token_url\": \"https://a/t\", \"client_id\": \"id 1\", "
                            "\"client_secret\": \"s:ec\"}");
    REQUIRE(c);
    struct token_call tc;
    REQUIRE(provider_build(&c->providers[0], STEP_GRANT, NULL, &tc) == 0);
    /* RFC 6749 2.3.1: base64("id%201:s%3Aec") */
    CHECK(has_header(&tc, "Authorization: Basic aWQlMjAxOnMlM0FlYw=="));
    CHECK_STR(tc.body, "grant_type=client_credentials");
    token_call_free(&tc);
    config_unref(c);
}

TEST(rfc6749_does_not_take_201)
{
    struct config *c = load("\"g\": {\"token_url\": \"https://a/t\", \"client_id\": \"c\", "
                            "\"client_secret\": \"s\"}");
    REQUIRE(c);
    struct mint_result r;
    const char *ok = "{\"access_token\": \"abc\", \"token_type\": \"bearer\"}";
    provider_parse(&c->providers[0], STEP_GRANT, 201, ok, strlen(ok), 0, &r);
    CHECK_EQ_INT(r.kind, MINT_UNAVAILABLE);
    provider_parse(&c->providers[0], STEP_GRANT, 200, ok, strlen(ok), 0, &r);
    CHECK_EQ_INT(r.kind, MINT_OK);
    CHECK_EQ_INT(r.lifetime_ms, -1); /* none given: the cache uses default_ttl_s */
    mint_result_free(&r);
    config_unref(c);
}

TEST(eptura_headers_code_and_milliseconds)
{
    struct config *c = load("\"ep\": {\"preset\": \"eptura\", \"site\": \"https://s.example\", "
                            "\"client_id\": \"cid\", \"username\": \"u\", \"password\": \"pw\", "
                            "\"redirect_uri\": \"https://localhost/cb\", \"scope\": \"api\"}");
    REQUIRE(c);
    const struct provider_config *p = &c->providers[0];
    struct token_call tc;
    REQUIRE(provider_build(p, STEP_CODE, NULL, &tc) == 0);
    CHECK_STR(tc.url, "https://s.example/external/api/oauth2/auth");
    CHECK(has_header(&tc, "x-auth-username: u"));
    CHECK(has_header(&tc, "x-auth-password: pw"));
    CHECK(has_header(&tc, "x-client-id: cid"));
    CHECK(has_header(&tc, "x-redirect-uri: https://localhost/cb"));
    CHECK(has_header(&tc, "x-scope: api"));
    CHECK(has_header(&tc, "Content-Type: application/json"));
    CHECK_EQ_INT(tc.body_len, 0);
    token_call_free(&tc);

    struct mint_result r;
    const char *code = "{\"code\": \"c0de\"}";
    provider_parse(p, STEP_CODE, 200, code, strlen(code), 0, &r);
    CHECK_EQ_INT(r.kind, MINT_OK);
    CHECK_STR(r.code, "c0de");
    mint_result_free(&r);

    REQUIRE(provider_build(p, STEP_EXCHANGE, "c0de", &tc) == 0);
    CHECK_STR(tc.url, "https://s.example/external/api/oauth2/token");
    CHECK(has_header(&tc, "x-grant-type: authorization_code"));
    CHECK(has_header(&tc, "x-auth-code: c0de"));
    CHECK(has_header(&tc, "x-client-id: cid"));
    CHECK(!has_header_prefix(&tc, "x-auth-password"));
    token_call_free(&tc);

    const char *tok = "{\"token_type\": \"Bearer\", \"access_token\": \"at1\", \"expires_in\": "
                      "3600000, \"refresh_token\": \"rt1\"}";
    provider_parse(p, STEP_EXCHANGE, 200, tok, strlen(tok), 0, &r);
    CHECK_EQ_INT(r.kind, MINT_OK);
    CHECK_EQ_INT(r.lifetime_ms, 3600000); /* 3600000 ms, not 1000 hours */
    CHECK_STR(r.refresh_token, "rt1");
    mint_result_free(&r);

    REQUIRE(provider_build(p, STEP_REFRESH, "rt1", &tc) == 0);
    CHECK(has_header(&tc, "x-grant-type: refresh_token"));
    CHECK(has_header(&tc, "x-refresh-token: rt1"));
    token_call_free(&tc);

    REQUIRE(provider_build(p, STEP_REVOKE, "at1", &tc) == 0);
    CHECK_STR(tc.url, "https://s.example/external/api/oauth2/revoke");
    CHECK(has_header(&tc, "x-token: at1"));
    CHECK(!has_header_prefix(&tc, "x-client-id"));
    token_call_free(&tc);
    config_unref(c);
}

TEST(enable_form_registration_id_and_jwt_exp)
{
    struct config *c = load("\"en\": {\"preset\": \"enable\", \"token_url\": \"https://e/t\", "
                            "\"client_id\": \"cid\", \"client_secret\": \"sec\", \"scope\": "
                            "\"read:deals read:users\", \"params\": "
                            "{\"dealtrack_registration_id\": \"reg-1\"}}");
    REQUIRE(c);
    const struct provider_config *p = &c->providers[0];
    struct token_call tc;
    REQUIRE(provider_build(p, STEP_GRANT, NULL, &tc) == 0);
    CHECK_STR(tc.body, "grant_type=client_credentials&scope=read%3Adeals%20read%3Ausers&"
                       "client_id=cid&client_secret=sec&dealtrack_registration_id=reg-1");
    token_call_free(&tc);

    /* header {"alg":"none"} . payload {"exp":2000} . sig */
    const char *jwt = "{\"access_token\": \"eyJhbGciOiJub25lIn0.eyJleHAiOjIwMDB9.c2ln\", "
                      "\"token_type\": \"Bearer\"}";
    struct mint_result r;
    provider_parse(p, STEP_GRANT, 200, jwt, strlen(jwt), 1000500, &r);
    CHECK_EQ_INT(r.kind, MINT_OK);
    CHECK_EQ_INT(r.lifetime_ms, 999500); /* exp 2000 s - now 1000.5 s */
    mint_result_free(&r);
    /* with expires_in as well, exp is used whether it is later or earlier */
    const char *both[] = {"{\"access_token\": \"eyJhbGciOiJub25lIn0.eyJleHAiOjIwMDB9.c2ln\", "
                          "\"token_type\": \"Bearer\", \"expires_in\": 60}",
                          "{\"access_token\": \"eyJhbGciOiJub25lIn0.eyJleHAiOjIwMDB9.c2ln\", "
                          "\"token_type\": \"Bearer\", \"expires_in\": 5000}"};
    for (int i = 0; i < 2; i++) {
        provider_parse(p, STEP_GRANT, 200, both[i], strlen(both[i]), 1000500, &r);
        CHECK_EQ_INT(r.kind, MINT_OK);
        CHECK_EQ_INT(r.lifetime_ms, 999500);
        mint_result_free(&r);
    }
    CHECK_EQ_INT(jwt_exp("eyJhbGciOiJub25lIn0.eyJleHAiOjIwMDB9.c2ln"), 2000);
    CHECK_EQ_INT(jwt_exp("opaque-token"), -1);

    const char *bad = "{\"error\": \"invalid_scope\", \"error_description\": \"no\"}";
    provider_parse(p, STEP_GRANT, 400, bad, strlen(bad), 0, &r);
    CHECK_EQ_INT(r.kind, MINT_REJECTED);
    CHECK_STR(r.error, "invalid_scope");
    CHECK(strstr(r.detail, "invalid_scope") != NULL);
    config_unref(c);
}

/* A JWT exp far in the future is bounded like a bad expires_in: 1e17 once overflowed
 * exp * 1000 (UBSan: signed overflow) and cached the token for ever; 1e400 is infinity. */
TEST(jwt_exp_years_away_is_a_failed_mint)
{
    struct config *c = load("\"en\": {\"preset\": \"enable\", \"token_url\": \"https://e/t\", "
                            "\"client_id\": \"cid\", \"client_secret\": \"sec\"}");
    REQUIRE(c);
    const struct provider_config *p = &c->providers[0];
    const int64_t now = 1700000000000LL; /* ms */
    const char *far[] = {
        "{\"access_token\": \"eyJhbGciOiJub25lIn0.eyJleHAiOjFlMTd9.c2ln\"}",             /* 1e17 */
        "{\"access_token\": \"eyJhbGciOiJub25lIn0.eyJleHAiOjFlNDAwfQ.c2ln\"}",           /* 1e400 */
        "{\"access_token\": \"eyJhbGciOiJub25lIn0.eyJleHAiOjIwMDAwMDAwMDAwMDB9.c2ln\"}", /* 2e12 */
        "{\"access_token\": \"eyJhbGciOiJub25lIn0.eyJleHAiOjFlMTd9.c2ln\", \"expires_in\": 60}",
    };
    for (size_t i = 0; i < sizeof far / sizeof far[0]; i++) {
        struct mint_result r;
        provider_parse(p, STEP_GRANT, 200, far[i], strlen(far[i]), now, &r);
        CHECK_EQ_INT(r.kind, MINT_UNAVAILABLE);
        CHECK(r.access_token == NULL);
        CHECK(strstr(r.detail, "exp") != NULL);
        mint_result_free(&r);
    }
    CHECK(jwt_exp("eyJhbGciOiJub25lIn0.eyJleHAiOjFlMTd9.c2ln") > 0);
    CHECK(jwt_exp("eyJhbGciOiJub25lIn0.eyJleHAiOjFlNDAwfQ.c2ln") > 0);
    /* an exp an hour away still gives that lifetime */
    const char *ok = "{\"access_token\": \"eyJhbGciOiJub25lIn0.eyJleHAiOjE3MDAwMDAwMDB9.c2ln\"}";
    struct mint_result r;
    provider_parse(p, STEP_GRANT, 200, ok, strlen(ok), now - 3600 * 1000, &r);
    CHECK_EQ_INT(r.kind, MINT_OK);
    CHECK_EQ_INT(r.lifetime_ms, 3600 * 1000);
    mint_result_free(&r);
    config_unref(c);
}

TEST(answers_that_are_not_tokens)
{
    struct config *c = load("\"g\": {\"token_url\": \"https://a/t\", \"client_id\": \"c\", "
                            "\"client_secret\": \"s\"}");
    REQUIRE(c);
    const struct provider_config *p = &c->providers[0];
    const char *cases[] = {
        "not json",
        "[1, 2]",
        "{\"token_type\": \"Bearer\", \"expires_in\": 60}",
        "{\"access_token\": \"a\", \"token_type\": \"mac\"}",
        "{\"access_token\": \"a\", \"expires_in\": 0}",
        "{\"access_token\": \"a\", \"expires_in\": -5}",
        "{\"access_token\": \"a b\"}",
        "{\"access_token\": \"a\\r\\nX-Injected: 1\"}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct mint_result r;
        provider_parse(p, STEP_GRANT, 200, cases[i], strlen(cases[i]), 0, &r);
        if (r.kind != MINT_UNAVAILABLE) fprintf(stderr, "accepted: %s\n", cases[i]);
        CHECK_EQ_INT(r.kind, MINT_UNAVAILABLE);
        CHECK(r.access_token == NULL);
        mint_result_free(&r);
    }
    struct mint_result r;
    provider_parse(p, STEP_GRANT, 500, "oops", 4, 0, &r);
    CHECK_EQ_INT(r.kind, MINT_UNAVAILABLE);
    provider_parse(p, STEP_GRANT, 429, "{\"error\": \"slow_down\"}", 22, 0, &r);
    CHECK_EQ_INT(r.kind, MINT_UNAVAILABLE);
    provider_parse(p, STEP_GRANT, 401, "{\"error\": \"invalid_client\"}", 27, 0, &r);
    CHECK_EQ_INT(r.kind, MINT_REJECTED);
    CHECK_STR(r.error, "invalid_client");
    provider_parse(p, STEP_GRANT, 403, "", 0, 0, &r);
    CHECK_EQ_INT(r.kind, MINT_REJECTED);
    CHECK_STR(r.error, "http_403");
    /* a provider's error code is sanitised before it reaches a client */
    const char *evil = "{\"error\": \"bad\\\"<script>\"}";
    provider_parse(p, STEP_GRANT, 400, evil, strlen(evil), 0, &r);
    CHECK_STR(r.error, "badscript");
    config_unref(c);
}

TEST(form_encoding)
{
    char out[64];
    CHECK_EQ_INT(form_encode("a b&c=d~._-", out, sizeof out), 17);
    CHECK_STR(out, "a%20b%26c%3Dd~._-");
    CHECK_EQ_INT(form_encode("abc", out, 3), -1);
}

TEST(retry_after_seconds_and_http_dates)
{
    time_t now = 1445412480; /* Wed, 21 Oct 2015 07:28:00 GMT */
    CHECK_EQ_INT(retry_after_parse(" 2\r\n", 4, now), 2);
    CHECK_EQ_INT(retry_after_parse("120", 3, now), 120);
    const char *d = " Wed, 21 Oct 2015 07:28:30 GMT\r\n";
    CHECK_EQ_INT(retry_after_parse(d, strlen(d), now), 30);
    d = "Wed, 21 Oct 2015 07:27:00 GMT"; /* in the past */
    CHECK_EQ_INT(retry_after_parse(d, strlen(d), now), 0);
    CHECK_EQ_INT(retry_after_parse("0", 1, now), 0);
    CHECK_EQ_INT(retry_after_parse("-5", 2, now), 0);
    CHECK_EQ_INT(retry_after_parse("5s", 2, now), 0);
    CHECK_EQ_INT(retry_after_parse("soon", 4, now), 0);
    CHECK_EQ_INT(retry_after_parse("86400", 5, now), 0);
    CHECK_EQ_INT(retry_after_parse("\r\n", 2, now), 0);
}
