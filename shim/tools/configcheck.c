/* Parses a claim config with the shim's own parser: prints "ok <claim> <gpus>" or "error <why>".
 * Used by tests/shim to prove the C and Python parsers accept the same language. */
#include <stdio.h>
#include <stdlib.h>

#include "../src/vgpu_internal.h"

int main(int argc, char **argv)
{
    static char text[65536];
    struct vgpu_claim_config cfg;
    char err[512];
    FILE *f;
    size_t n;
    if (argc != 2) {
        fprintf(stderr, "usage: vgpu-configcheck FILE\n");
        return 2;
    }
    f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    if (vgpu_config_parse(text, &cfg, err, sizeof(err)) != 0) {
        printf("error %s\n", err);
        return 1;
    }
    printf("ok %s %d", cfg.claim_uid, cfg.gpu_count);
    for (int i = 0; i < cfg.gpu_count; i++)
        printf(" %s:%lld:%d:%d", cfg.gpus[i].uuid, (long long)cfg.gpus[i].memory_bytes, cfg.gpus[i].cores,
               cfg.gpus[i].policy);
    printf("\n");
    return 0;
}
