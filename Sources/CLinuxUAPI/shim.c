/* CLinuxUAPI is header-only; this file gives SwiftPM a compilation unit. */
#include "CLinuxUAPI.h"
