/* test_rng.h: the kernel tests' random numbers (xorshift64, one stream per
 * test program, the same sequence on every run), for C and C++. */
#ifndef FH_TEST_RNG_H
#define FH_TEST_RNG_H

#include <stdint.h>

static uint64_t rng = 88172645463325252ull;

/* uniform in [-1, 1) */
static inline float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

#endif
