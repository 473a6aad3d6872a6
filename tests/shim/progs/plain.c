/* A program that never touches CUDA: with the shim preloaded it must behave exactly as without.
 * It uses dlsym for a non-CUDA name (through the shim's dlsym) and prints a checksum. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    size_t (*my_strlen)(const char *) = (size_t(*)(const char *))dlsym(RTLD_DEFAULT, "strlen");
    void *next = dlsym(RTLD_NEXT, "printf");
    unsigned long sum = 0;
    for (int i = 1; i < argc; i++)
        sum = sum * 31 + my_strlen(argv[i]);
    printf("plain sum=%lu next=%s\n", sum, next ? "found" : "missing");
    fflush(stdout);
    puts("plain done");
    return 0;
}
