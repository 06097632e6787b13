/* tsan_criterion.c: lets Criterion start under ThreadSanitizer (linked into
 * the tests of a -Db_sanitize=thread build only, tests/meson.build).
 *
 * Criterion's sandbox (BoxFort, built into libcriterion) maps an arena that
 * the test processes inherit at a random address: ten times it draws
 *
 *     base = 0x200000000000 + (rand_r(&seed) & 0x3fffff) * 16 MiB
 *
 * asks mincore() whether [base, base + size) is unmapped and, if so, maps it
 * there MAP_FIXED. Under ThreadSanitizer nearly all of that window is TSan's
 * shadow and meta memory or gaps it reserves: every draw reads as mapped, or
 * TSan's mmap refuses the address, and Criterion aborts with "Could not
 * initialize inheritable arena: Resource temporarily unavailable"
 * (Snaipe/Criterion#274; ASan has no such window and needs nothing).
 *
 * This rand_r, which takes the place of libc's for the test program and its
 * libraries, draws from the slots TSan does let a program map: starting at
 * the program's own image (application memory by TSan's definition) it
 * probes 16 MiB slots with MAP_FIXED_NOREPLACE and hands back the first one
 * that lands where asked (TSan moves a hint outside application memory away,
 * the kernel refuses an occupied range). libcriterion is the only library
 * of a test program that calls rand_r (nm -D); no code of ours does. */
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define BXF_BASE 0x200000000000ull /* BoxFort's window and slot size (arena.c) */
#define BXF_SLOTS 0x400000u
#define BXF_SLOT (1ull << 24)

/* 1 when the 16 MiB slot i is unmapped and TSan lets it be mapped. */
static int slot_free(uint32_t i)
{
    void *at = (void *)(uintptr_t)(BXF_BASE + (uint64_t)i * BXF_SLOT);
    void *p = mmap(at, BXF_SLOT, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != MAP_FAILED)
        munmap(p, BXF_SLOT);
    return p == at;
}

int rand_r(unsigned int *seed)
{
    /* start 1 to 2 GiB above the program image, where the seed says */
    uint64_t self = (uintptr_t)&slot_free;
    uint32_t from = self > BXF_BASE ? (uint32_t)((self - BXF_BASE) / BXF_SLOT) : 0;
    from = (from + 64 + *seed % 64) % BXF_SLOTS;
    ++*seed;
    /* application memory comes in TiB-sized pieces: a coarse scan finds one */
    for (uint32_t step = 64; step; step /= 8)
        for (uint32_t k = 0; k < BXF_SLOTS; k += step)
            if (slot_free((from + k) % BXF_SLOTS))
                return (int)((from + k) % BXF_SLOTS);
    return (int)(*seed & 0x7fffffff); /* nothing found: Criterion reports it */
}
