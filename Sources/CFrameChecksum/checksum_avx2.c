#include "CFrameChecksum.h"

#include <stdatomic.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

static int detect_avx2(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    // OSXSAVE (ecx bit 27): XGETBV is usable; XCR0 bits 1 and 2: the kernel saves SSE and YMM state.
    if (!(ecx & (1u << 27))) return 0;
    unsigned int xcr0_lo, xcr0_hi;
    __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & 0x6) != 0x6) return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    return (ebx & (1u << 5)) != 0;  // AVX2
}

#else
static int detect_avx2(void) { return 0; }
#endif

int ferry_checksum_has_avx2(void) {
    // 0: not yet decided, 1: no, 2: yes.  Racing first callers decide the same.
    static _Atomic int decided = 0;
    int value = atomic_load_explicit(&decided, memory_order_relaxed);
    if (value == 0) {
        value = detect_avx2() ? 2 : 1;
        atomic_store_explicit(&decided, value, memory_order_relaxed);
    }
    return value == 2;
}

#if defined(__x86_64__)
__attribute__((target("avx2")))
void ferry_checksum_blocks_avx2(const void *data, size_t blocks, uint64_t lanes[8], uint64_t keys[8], uint64_t seen[8]) {
    const unsigned char *p = data;
    __m256i lanes0 = _mm256_loadu_si256((const __m256i *)lanes), lanes1 = _mm256_loadu_si256((const __m256i *)(lanes + 4));
    __m256i keys0 = _mm256_loadu_si256((const __m256i *)keys), keys1 = _mm256_loadu_si256((const __m256i *)(keys + 4));
    __m256i seen0 = _mm256_loadu_si256((const __m256i *)seen), seen1 = _mm256_loadu_si256((const __m256i *)(seen + 4));
    const __m256i step = _mm256_set1_epi64x((long long)0x9e3779b97f4a7c15ULL);
    for (size_t block = 0; block < blocks; block++, p += 64) {
        __m256i word0 = _mm256_loadu_si256((const __m256i *)p), word1 = _mm256_loadu_si256((const __m256i *)(p + 32));
        __m256i keyed0 = _mm256_xor_si256(word0, keys0), keyed1 = _mm256_xor_si256(word1, keys1);
        // Lane i takes its neighbour's word (lane i ^ 1): swap the 64-bit halves of each 128-bit lane.
        __m256i neighbour0 = _mm256_shuffle_epi32(word0, 0x4e), neighbour1 = _mm256_shuffle_epi32(word1, 0x4e);
        // lo32(x) * hi32(x), a full 64-bit product.
        __m256i product0 = _mm256_mul_epu32(keyed0, _mm256_srli_epi64(keyed0, 32));
        __m256i product1 = _mm256_mul_epu32(keyed1, _mm256_srli_epi64(keyed1, 32));
        lanes0 = _mm256_add_epi64(lanes0, _mm256_add_epi64(neighbour0, product0));
        lanes1 = _mm256_add_epi64(lanes1, _mm256_add_epi64(neighbour1, product1));
        seen0 = _mm256_or_si256(seen0, word0);
        seen1 = _mm256_or_si256(seen1, word1);
        keys0 = _mm256_add_epi64(keys0, step);
        keys1 = _mm256_add_epi64(keys1, step);
    }
    _mm256_storeu_si256((__m256i *)lanes, lanes0); _mm256_storeu_si256((__m256i *)(lanes + 4), lanes1);
    _mm256_storeu_si256((__m256i *)keys, keys0); _mm256_storeu_si256((__m256i *)(keys + 4), keys1);
    _mm256_storeu_si256((__m256i *)seen, seen0); _mm256_storeu_si256((__m256i *)(seen + 4), seen1);
}
#else
void ferry_checksum_blocks_avx2(const void *data, size_t blocks, uint64_t lanes[8], uint64_t keys[8], uint64_t seen[8]) {
    (void)data; (void)blocks; (void)lanes; (void)keys; (void)seen;
    __builtin_trap();  // never called: ferry_checksum_has_avx2() is 0 here
}
#endif
