/* main.c - runs the unit tests registered with TEST(); argv[1], when given, keeps only the
 * tests whose name contains it. Prints "ok name" / "FAIL name" per test and, as the last line,
 * "N passed, N failed"; exits 1 when a test failed. The registry is a static array: nothing to
 * free. */
#include <stdlib.h>

#include "unit.h"

#define UNIT_TESTS_MAX 1024

static struct {
    const char *name;
    unit_fn fn;
} tests[UNIT_TESTS_MAX];
static int n_tests;

int unit_failed;

void unit_register(const char *name, unit_fn fn)
{
    if (n_tests == UNIT_TESTS_MAX) {
        fprintf(stderr, "unit: more than %d tests\n", UNIT_TESTS_MAX);
        exit(2);
    }
    tests[n_tests].name = name;
    tests[n_tests].fn = fn;
    n_tests++;
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    int passed = 0, failed = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < n_tests; i++) {
        if (filter && !strstr(tests[i].name, filter)) continue;
        unit_failed = 0;
        tests[i].fn();
        fflush(stderr);
        if (unit_failed) {
            printf("FAIL %s\n", tests[i].name);
            failed++;
        } else {
            printf("ok %s\n", tests[i].name);
            passed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
