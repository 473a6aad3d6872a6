/* Another preloaded interposer, loaded after libvgpu.so: it wraps puts() and finds the real one
 * with dlsym(RTLD_NEXT). If the shim's dlsym broke RTLD_NEXT (resolving relative to itself), this
 * would find its own puts again and recurse until the stack overflows. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int puts(const char *s)
{
    static int (*real_puts)(const char *);
    if (!real_puts)
        real_puts = (int (*)(const char *))dlsym(RTLD_NEXT, "puts");
    fputs("[nextlib] ", stdout);
    return real_puts(s);
}
