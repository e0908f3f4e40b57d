// FrameChecksum's block loop in AVX2, for the hosts that have it.  The
// algorithm is MigrationProtocol's FrameChecksum (docs/stream-format.md); the
// Swift loop there is the reference and the fallback, and the tests hold the
// two to the same results.
#ifndef FERRY_CFRAMECHECKSUM_H
#define FERRY_CFRAMECHECKSUM_H

#include <stddef.h>
#include <stdint.h>

/// 1 when this CPU and the kernel support AVX2 (CPUID leaf 7 and the YMM
/// state enabled in XCR0), else 0.  Decided once.
int ferry_checksum_has_avx2(void);

/// Runs `blocks` 64-byte blocks of `data` through the loop.  `lanes`, `keys`
/// and `seen` are eight 64-bit words each, read and updated in place.  Only
/// call when `ferry_checksum_has_avx2()` returned 1.
void ferry_checksum_blocks_avx2(const void *data, size_t blocks, uint64_t lanes[8], uint64_t keys[8], uint64_t seen[8]);

#endif
