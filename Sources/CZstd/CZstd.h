// Debian's system libzstd (package libzstd-dev), for multifd's zstd compression.
// Only the stable API is used: Ferry links the shared library, and zstd's
// experimental (ZSTD_STATIC_LINKING_ONLY) functions carry no ABI promise there.
// zstd_errors.h gives ZSTD_getErrorCode, so errors map to cases, not strings.
#ifndef FERRY_CZSTD_H
#define FERRY_CZSTD_H
#include <zstd.h>
#include <zstd_errors.h>
#endif
