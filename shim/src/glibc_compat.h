/*
 * Bind every libc/libdl/libpthread symbol the shim uses to its oldest version, so libvgpu.so
 * loads on glibc 2.17 even when built on a newer glibc (tests/shim checks objdump -T).
 * Functions whose default version moved (dl*, pthread_once, pthread_create and
 * pthread_attr_setstacksize to GLIBC_2.34, pthread_sigmask to 2.32, fcntl to fcntl64)
 * are pinned here or avoided (fcntl goes through syscall()); pthread_atfork comes from
 * libc_nonshared.a as on every glibc (__register_atfork@GLIBC_2.3.2).
 */
#ifndef VGPU_GLIBC_COMPAT_H
#define VGPU_GLIBC_COMPAT_H

#if defined(__x86_64__)
#define VGPU_GLIBC_BASE "GLIBC_2.2.5"
#elif defined(__aarch64__)
#define VGPU_GLIBC_BASE "GLIBC_2.17"
#endif

#ifdef VGPU_GLIBC_BASE
#define VGPU_PIN(sym) __asm__(".symver " #sym "," #sym "@" VGPU_GLIBC_BASE)
VGPU_PIN(dlopen);
VGPU_PIN(dlvsym);
VGPU_PIN(dlerror);
VGPU_PIN(pthread_once);
VGPU_PIN(pthread_create);
VGPU_PIN(pthread_attr_setstacksize);
VGPU_PIN(pthread_sigmask);
#undef VGPU_PIN
#endif

#endif /* VGPU_GLIBC_COMPAT_H */
