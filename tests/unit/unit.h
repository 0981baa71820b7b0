/* unit.h - a tiny unit-test runner: TEST(name) { CHECK(...); }.
 *
 * Tests register themselves before main() through a constructor; tests/unit/main.c runs them
 * in order of registration, optionally filtered by a substring of their name. CHECK* report a
 * failure with file:line and the values, then go on; REQUIRE stops the test (use it before
 * dereferencing what a failure would leave NULL). The runner owns nothing the tests allocate:
 * each test frees its own memory, and LeakSanitizer checks it at exit. */
#ifndef AUTHPROXY_UNIT_H
#define AUTHPROXY_UNIT_H

#include <stdio.h>
#include <string.h>

typedef void (*unit_fn)(void);

void unit_register(const char *name, unit_fn fn);
extern int unit_failed; /* failed checks in the running test */

#define TEST(name)                                                                                 \
    static void test_##name(void);                                                                 \
    __attribute__((constructor)) static void register_##name(void)                                 \
    {                                                                                              \
        unit_register(#name, test_##name);                                                         \
    }                                                                                              \
    static void test_##name(void)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);               \
            unit_failed++;                                                                         \
        }                                                                                          \
    } while (0)

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: REQUIRE(%s) failed\n", __FILE__, __LINE__, #cond);             \
            unit_failed++;                                                                         \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) {                                                                            \
            fprintf(stderr, "%s:%d: CHECK_EQ_INT(%s, %s) failed: %lld != %lld\n", __FILE__,        \
                    __LINE__, #a, #b, a_, b_);                                                     \
            unit_failed++;                                                                         \
        }                                                                                          \
    } while (0)

/* Either side may be NULL; two NULLs are equal. */
#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if ((a_ == NULL) != (b_ == NULL) || (a_ && strcmp(a_, b_) != 0)) {                         \
            fprintf(stderr, "%s:%d: CHECK_STR(%s, %s) failed: \"%s\" != \"%s\"\n", __FILE__,       \
                    __LINE__, #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");                     \
            unit_failed++;                                                                         \
        }                                                                                          \
    } while (0)

#endif
