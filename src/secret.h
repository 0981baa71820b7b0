/* secret.h - the one way a secret (token, client secret, password, code, refresh token, key)
 * is wiped from memory before the memory is freed or reused: OPENSSL_cleanse, which the
 * compiler may not optimise away. Owns nothing. */
#ifndef AUTHPROXY_SECRET_H
#define AUTHPROXY_SECRET_H

#include <openssl/crypto.h>
#include <stddef.h>
#include <string.h>

static inline void secret_wipe(void *p, size_t n)
{
    if (p && n) OPENSSL_cleanse(p, n);
}

/* Wipes a NUL-terminated secret string (its bytes, not the terminator). */
static inline void secret_wipe_str(char *s)
{
    if (s) OPENSSL_cleanse(s, strlen(s));
}

#endif
