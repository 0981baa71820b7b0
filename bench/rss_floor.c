/* rss_floor.c - the resident memory a process has before authproxy's own code runs: it links the
 * libraries authproxy links (Debian's libuv, cJSON, libcurl, OpenSSL, liburing) and does only
 * the initialisation authproxy cannot skip, printing VmRSS after each step. bench.py reports
 * it next to the contenders' "RSS after start", so the part of authproxy's RSS that comes from
 * its prescribed libraries is measured, not assumed. Output: one "<step>\t<kB>" line per step.
 * Usage: rss_floor [ca_file] */
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <liburing.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

static void step(const char *what)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) sscanf(line + 6, "%ld", &kb);
    if (f) fclose(f);
    printf("%s\t%ld\n", what, kb);
}

int main(int argc, char **argv)
{
    const char *ca = argc > 1 ? argv[1] : "/etc/ssl/certs/ca-certificates.crt";
    /* referenced so that the linker keeps every library, as authproxy's link does */
    void *volatile keep[] = {(void *)uv_loop_init, (void *)cJSON_Parse, (void *)io_uring_queue_init};
    (void)keep[0];
    step("linked");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 1;
    step("curl_global_init");
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) return 1;
    step("SSL_CTX_new");
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) return 1;
    step("CA bundle");
    SSL_CTX_free(ctx);
    curl_global_cleanup();
    return 0;
}
