/*
 * The arithmetic of the guest's slow-access histogram (see workload.c), apart
 * so that tests/python/test_guest_slow_histogram.py compiles it on the host.
 * Needs u64 (guest.h).
 */
#ifndef FERRY_GUEST_SLOW_H
#define FERRY_GUEST_SLOW_H

#define SLOW_BUCKETS 65

/* TSC cycles from which an access counts as slow: 16 us, rounded up, so that
 * every such access converts to 16 us or more (rounded down, an access of
 * exactly that many cycles converted to 15 us). */
static inline u64 slow_cycles(u64 tsc_khz) { return (tsc_khz * 16 + 999) / 1000; }

/* Microseconds of `cycles`. */
static inline u64 slow_micros(u64 cycles, u64 tsc_khz) { return cycles * 1000 / tsc_khz; }

/* The bucket of an access of `micros` us: four per doubling from 16 us
 * (bucket 4k+q holds [16us * 2^k * (1 + q/4), 16us * 2^k * (1 + (q+1)/4))),
 * the last catching everything over ~1 s; under 16 us, the first. */
static inline u64 slow_bucket(u64 micros) {
    if (micros < 16) return 0;
    u64 octave = 63 - (u64)__builtin_clzl(micros) - 4;
    u64 bucket = octave * 4 + (((micros << 2) >> (octave + 4)) & 3);
    return bucket >= SLOW_BUCKETS ? SLOW_BUCKETS - 1 : bucket;
}

#endif
