/* provider.c - token endpoint requests and responses (see provider.h). */
#include "provider.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PARAMS_MAX 24
#define LIFETIME_MAX_S (10LL * 365 * 86400) /* longer expires_in or exp: a failed mint */
#define JWT_EXP_MAX 100000000000LL          /* exp above it (year 5138) counts as this */

struct param {
    const char *name; /* wire name */
    const char *value;
};

struct params {
    struct param p[PARAMS_MAX];
    int n;
};

static const char *wire_name(const struct provider_config *p, const char *std)
{
    for (int i = 0; i < p->n_param_names; i++)
        if (strcmp(p->param_names[i].key, std) == 0) return p->param_names[i].value;
    return std;
}

static void add(struct params *ps, const struct provider_config *p, const char *std,
                const char *value)
{
    if (!value || ps->n >= PARAMS_MAX) return;
    ps->p[ps->n].name = wire_name(p, std);
    ps->p[ps->n].value = value;
    ps->n++;
}

int form_encode(const char *in, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *s = (const unsigned char *)in; *s; s++) {
        if (isalnum(*s) || *s == '-' || *s == '.' || *s == '_' || *s == '~') {
            if (n + 1 >= cap) return -1;
            out[n++] = (char)*s;
        } else {
            if (n + 3 >= cap) return -1;
            out[n++] = '%';
            out[n++] = hex[*s >> 4];
            out[n++] = hex[*s & 15];
        }
    }
    if (n >= cap) return -1;
    out[n] = 0;
    return (int)n;
}

static char *form_body(const struct params *ps, size_t *len)
{
    size_t cap = 1;
    for (int i = 0; i < ps->n; i++)
        cap += 3 * (strlen(ps->p[i].name) + strlen(ps->p[i].value)) + 2;
    char *b = malloc(cap);
    if (!b) return NULL;
    size_t n = 0;
    for (int i = 0; i < ps->n; i++) {
        if (i) b[n++] = '&';
        n += (size_t)form_encode(ps->p[i].name, b + n, cap - n);
        b[n++] = '=';
        n += (size_t)form_encode(ps->p[i].value, b + n, cap - n);
    }
    b[n] = 0;
    *len = n;
    return b;
}

static char *json_body(const struct params *ps, size_t *len)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    for (int i = 0; i < ps->n; i++)
        cJSON_AddStringToObject(o, ps->p[i].name, ps->p[i].value);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (s) *len = strlen(s);
    return s;
}

/* "Authorization: Basic base64(urlenc(id):urlenc(secret))" (RFC 6749 2.3.1), or with the id
 * and secret as they are (raw) where the provider's documents use curl -u (EPC). */
static struct curl_slist *basic_auth(struct curl_slist *h, const char *id, const char *secret,
                                     bool plain)
{
    size_t il = strlen(id) * 3 + 1, sl = strlen(secret) * 3 + 1;
    char *buf = malloc(il + sl + 1);
    size_t b64cap = 4 * ((il + sl + 2) / 3) + 32;
    char *line = malloc(b64cap + 32);
    struct curl_slist *r = NULL;
    if (!buf || !line) goto out;
    int a, b;
    if (plain) {
        a = sprintf(buf, "%s:", id) - 1;
        b = sprintf(buf + a + 1, "%s", secret);
    } else {
        a = form_encode(id, buf, il);
        buf[a] = ':';
        b = form_encode(secret, buf + a + 1, sl);
    }
    int n = snprintf(line, 32, "Authorization: Basic ");
    EVP_EncodeBlock((unsigned char *)line + n, (const unsigned char *)buf, a + 1 + b);
    r = curl_slist_append(h, line);
    OPENSSL_cleanse(buf, il + sl + 1);
    OPENSSL_cleanse(line, b64cap + 32);
out:
    free(buf);
    free(line);
    return r;
}

static struct curl_slist *header_param(struct curl_slist *h, const char *name, const char *value)
{
    size_t n = strlen(name) + strlen(value) + 3;
    char *line = malloc(n);
    if (!line) return NULL;
    snprintf(line, n, "%s: %s", name, value);
    struct curl_slist *r = curl_slist_append(h, line);
    OPENSSL_cleanse(line, n);
    free(line);
    return r;
}

int provider_build(const struct provider_config *p, enum mint_step step, const char *arg,
                   struct token_call *out)
{
    struct params ps = {.n = 0};
    memset(out, 0, sizeof *out);
    bool client_auth = true;
    switch (step) {
    case STEP_GRANT:
        out->url = p->token_url;
        add(&ps, p, "grant_type", "client_credentials");
        add(&ps, p, "scope", p->scope);
        break;
    case STEP_CODE:
        out->url = p->code_url;
        client_auth = false; /* the user's credentials authenticate this step */
        add(&ps, p, "username", p->username);
        add(&ps, p, "password", p->password);
        add(&ps, p, "client_id", p->client_id);
        add(&ps, p, "redirect_uri", p->redirect_uri);
        add(&ps, p, "scope", p->scope);
        break;
    case STEP_EXCHANGE:
        out->url = p->token_url;
        add(&ps, p, "grant_type", "authorization_code");
        add(&ps, p, "code", arg);
        add(&ps, p, "redirect_uri", p->redirect_uri);
        add(&ps, p, "scope", p->scope);
        break;
    case STEP_REFRESH:
        out->url = p->token_url;
        add(&ps, p, "grant_type", "refresh_token");
        add(&ps, p, "refresh_token", arg);
        add(&ps, p, "redirect_uri", p->redirect_uri);
        add(&ps, p, "scope", p->scope);
        break;
    case STEP_REVOKE:
        out->url = p->revoke_url;
        add(&ps, p, "token", arg);
        if (p->preset == PRESET_EPTURA) client_auth = false; /* "the only header needed" */
        break;
    }
    if (!out->url) return -1;
    struct curl_slist *h = NULL;
    if (client_auth) {
        if (p->client_auth == CLIENT_AUTH_BASIC && p->client_id) {
            h = basic_auth(h, p->client_id, p->client_secret ? p->client_secret : "",
                           p->preset == PRESET_EPC);
            if (!h) return -1;
        } else if (p->client_auth == CLIENT_AUTH_BODY) {
            add(&ps, p, "client_id", p->client_id);
            add(&ps, p, "client_secret", p->client_secret);
        } else if (p->client_auth == CLIENT_AUTH_NONE || !p->client_id) {
            add(&ps, p, "client_id", p->client_id);
        }
    }
    if (step != STEP_REVOKE)
        for (int i = 0; i < p->n_params && ps.n < PARAMS_MAX; i++) {
            ps.p[ps.n].name = p->params[i].key;
            ps.p[ps.n].value = p->params[i].value;
            ps.n++;
        }
    struct curl_slist *t = NULL;
    if (p->param_style == PARAM_HEADERS) {
        for (int i = 0; i < ps.n; i++) {
            t = header_param(h, ps.p[i].name, ps.p[i].value);
            if (!t) goto fail;
            h = t;
        }
        out->body = strdup("");
        out->body_len = 0;
        t = curl_slist_append(h, p->json_content_type || p->preset == PRESET_EPTURA
                                     ? "Content-Type: application/json"
                                     : "Content-Type: application/x-www-form-urlencoded");
    } else if (p->param_style == PARAM_JSON) {
        out->body = json_body(&ps, &out->body_len);
        t = curl_slist_append(h, "Content-Type: application/json");
    } else {
        out->body = form_body(&ps, &out->body_len);
        t = curl_slist_append(h, "Content-Type: application/x-www-form-urlencoded");
    }
    if (!t || !out->body) goto fail;
    h = t;
    t = curl_slist_append(h, "Accept: application/json");
    if (!t) goto fail;
    h = t;
    t = curl_slist_append(h, "Expect:"); /* no 100-continue round trip */
    if (!t) goto fail;
    out->headers = t;
    return 0;
fail:
    curl_slist_free_all(h);
    free(out->body);
    out->body = NULL;
    return -1;
}

void token_call_free(struct token_call *c)
{
    /* header lines may hold secrets (Basic, x-auth-password) */
    for (struct curl_slist *s = c->headers; s; s = s->next)
        OPENSSL_cleanse(s->data, strlen(s->data));
    curl_slist_free_all(c->headers);
    if (c->body) {
        OPENSSL_cleanse(c->body, c->body_len);
        free(c->body);
    }
    memset(c, 0, sizeof *c);
}

static void free_secret(char **s)
{
    if (*s) {
        OPENSSL_cleanse(*s, strlen(*s));
        free(*s);
        *s = NULL;
    }
}

void mint_result_free(struct mint_result *r)
{
    free_secret(&r->access_token);
    free_secret(&r->refresh_token);
    free_secret(&r->code);
}

/* Tokens, codes and refresh tokens end up in header lines: visible ASCII only. */
static bool token_chars_ok(const char *s)
{
    if (!*s) return false;
    for (; *s; s++)
        if (*s < 0x21 || *s > 0x7e) return false;
    return true;
}

static void sanitize_code(const char *in, char *out, size_t cap)
{
    size_t n = 0;
    for (; in && *in && n + 1 < cap; in++)
        if (isalnum((unsigned char)*in) || *in == '_' || *in == '-' || *in == '.') out[n++] = *in;
    out[n] = 0;
}

static int b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
    static signed char map[256];
    static bool init;
    if (!init) {
        memset(map, -1, sizeof map);
        const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for (int i = 0; i < 64; i++)
            map[(unsigned char)a[i]] = (signed char)i;
        map['+'] = 62;
        map['/'] = 63;
        init = true;
    }
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '=') break;
        int v = map[(unsigned char)in[i]];
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n >= cap) return -1;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    return (int)n;
}

int64_t jwt_exp(const char *token)
{
    const char *d1 = strchr(token, '.');
    if (!d1) return -1;
    const char *d2 = strchr(d1 + 1, '.');
    if (!d2) return -1;
    size_t len = (size_t)(d2 - d1 - 1);
    if (len == 0 || len > 8192) return -1;
    unsigned char buf[6200];
    int n = b64url_decode(d1 + 1, len, buf, sizeof buf - 1);
    if (n <= 0) return -1;
    cJSON *o = cJSON_ParseWithLength((const char *)buf, (size_t)n);
    if (!o) return -1;
    cJSON *exp = cJSON_GetObjectItemCaseSensitive(o, "exp");
    int64_t r = -1;
    if (cJSON_IsNumber(exp) && exp->valuedouble > 0) /* bounded before the cast: 1e17 or 1e400 */
        r = exp->valuedouble < (double)JWT_EXP_MAX ? (int64_t)exp->valuedouble : JWT_EXP_MAX;
    cJSON_Delete(o);
    return r;
}

static char *dup_string(cJSON *o, const char *key)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) && v->valuestring ? strdup(v->valuestring) : NULL;
}

static void unavailable(struct mint_result *r, const struct provider_config *p, const char *what)
{
    r->kind = MINT_UNAVAILABLE;
    snprintf(r->detail, sizeof r->detail, "provider %s: %s", p->name, what);
}

void provider_parse(const struct provider_config *p, enum mint_step step, long status,
                    const char *body, size_t len, int64_t now_ms, struct mint_result *r)
{
    memset(r, 0, sizeof *r);
    r->lifetime_ms = -1;
    char what[120];
    bool success = status == 200 || (status == 201 && p->accept_201) ||
                   (step == STEP_REVOKE && status >= 200 && status < 300);
    cJSON *o = len ? cJSON_ParseWithLength(body, len) : NULL;
    if (!success) {
        cJSON *err = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "error") : NULL;
        if (status >= 400 && status < 500 && status != 429) {
            r->kind = MINT_REJECTED;
            if (cJSON_IsString(err)) sanitize_code(err->valuestring, r->error, sizeof r->error);
            if (!r->error[0]) snprintf(r->error, sizeof r->error, "http_%ld", status);
            snprintf(r->detail, sizeof r->detail, "provider %s rejected the token request: %s",
                     p->name, r->error);
        } else {
            snprintf(what, sizeof what, "the token endpoint answered HTTP %ld", status);
            unavailable(r, p, what);
        }
        goto out;
    }
    if (step == STEP_REVOKE) {
        r->kind = MINT_OK;
        goto out;
    }
    if (!cJSON_IsObject(o)) {
        unavailable(r, p, "the token endpoint's answer is not a JSON object");
        goto out;
    }
    if (step == STEP_CODE) {
        r->code = dup_string(o, "code");
        if (!r->code || !token_chars_ok(r->code)) {
            unavailable(r, p, "the code endpoint's answer has no usable code");
            goto out;
        }
        r->kind = MINT_OK;
        goto out;
    }
    r->access_token = dup_string(o, "access_token");
    if (!r->access_token || !token_chars_ok(r->access_token)) {
        unavailable(r, p, "the token endpoint's answer has no usable access_token");
        goto out;
    }
    cJSON *tt = cJSON_GetObjectItemCaseSensitive(o, "token_type");
    if (tt && !(cJSON_IsString(tt) && strcasecmp(tt->valuestring, "bearer") == 0)) {
        unavailable(r, p, "the token endpoint issued a token_type other than Bearer");
        goto out;
    }
    r->refresh_token = dup_string(o, "refresh_token");
    if (r->refresh_token && !token_chars_ok(r->refresh_token)) free_secret(&r->refresh_token);
    cJSON *ei = cJSON_GetObjectItemCaseSensitive(o, "expires_in");
    double secs = -1;
    if (cJSON_IsNumber(ei))
        secs = ei->valuedouble;
    else if (cJSON_IsString(ei) && ei->valuestring[0]) {
        char *end;
        secs = strtod(ei->valuestring, &end);
        if (*end) secs = 0;
    } else if (ei && !cJSON_IsNull(ei)) {
        secs = 0;
    }
    if (ei && !cJSON_IsNull(ei)) {
        if (p->expires_in_ms) secs /= 1000.0;
        if (!(secs > 0) || secs > (double)LIFETIME_MAX_S) {
            unavailable(r, p, "the token endpoint gave an expires_in of 0 or less");
            goto out;
        }
        r->lifetime_ms = (int64_t)(secs * 1000.0);
    }
    int64_t exp = jwt_exp(r->access_token);
    if (exp > 0 && (r->lifetime_ms < 0 || p->use_jwt_exp)) {
        int64_t jl = exp * 1000 - now_ms; /* exp <= JWT_EXP_MAX: no overflow */
        if (jl <= 0) {
            unavailable(r, p, "the token endpoint issued an expired JWT");
            goto out;
        }
        if (jl > LIFETIME_MAX_S * 1000) { /* as for expires_in: a lifetime no token has */
            unavailable(r, p, "the token endpoint issued a JWT whose exp is years away");
            goto out;
        }
        r->lifetime_ms = jl; /* a preset that trusts exp (enable) takes it over expires_in */
    }
    r->kind = MINT_OK;
out:
    cJSON_Delete(o);
    if (r->kind != MINT_OK) mint_result_free(r);
}
