/* log.h - leveled logging to stderr, text or JSON lines.
 *
 * The level and format are process-wide settings written once at start (and on reload) before
 * loops run; callers test log_enabled() before doing any formatting work on a hot path.
 * Never pass a secret (token, client secret, password, code, refresh token) to these functions:
 * use log_fingerprint() to show which secret is meant. */
#ifndef AUTHPROXY_LOG_H
#define AUTHPROXY_LOG_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

void log_setup(enum log_level level, enum log_format format);
extern enum log_level log_min_level;

static inline bool log_enabled(enum log_level l)
{
    return l >= log_min_level;
}

void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_enabled(LOG_DEBUG)) log_write(LOG_DEBUG, __VA_ARGS__);                             \
    } while (0)
#define log_info(...)                                                                              \
    do {                                                                                           \
        if (log_enabled(LOG_INFO)) log_write(LOG_INFO, __VA_ARGS__);                               \
    } while (0)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

/* Writes the first 12 hex digits of SHA-256(secret) into out (13 bytes). */
void log_fingerprint(const char *secret, size_t len, char out[13]);

#endif
