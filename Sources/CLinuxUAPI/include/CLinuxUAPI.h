/*
 * CLinuxUAPI: the one C target of Ferry.
 *
 * Swift cannot import function-like macros (KVM_CREATE_VM expands through
 * _IO/_IOW/_IOWR) nor call variadic functions (ioctl, syscall).  This header
 * re-exports those numbers as constants, gives fixed-arity entry points, defines
 * constants newer than the installed headers, and asserts the struct layouts
 * Swift relies on.  Every entry point returns -errno on failure so Swift never
 * reads the thread-local errno after another call.
 */
#ifndef CLINUXUAPI_H
#define CLINUXUAPI_H

#include <linux/kvm.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <signal.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <stdint.h>

/* ---- system ioctls (on /dev/kvm) */
static const unsigned long CLinuxUAPI_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CLinuxUAPI_KVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CLinuxUAPI_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CLinuxUAPI_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CLinuxUAPI_KVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
/* ---- VM ioctls */
static const unsigned long CLinuxUAPI_KVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long CLinuxUAPI_KVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long CLinuxUAPI_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CLinuxUAPI_KVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CLinuxUAPI_KVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long CLinuxUAPI_KVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CLinuxUAPI_KVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CLinuxUAPI_KVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;
static const unsigned long CLinuxUAPI_KVM_ENABLE_CAP = KVM_ENABLE_CAP;
static const unsigned long CLinuxUAPI_KVM_CLEAR_DIRTY_LOG = KVM_CLEAR_DIRTY_LOG;
/* ---- vCPU ioctls */
static const unsigned long CLinuxUAPI_KVM_RUN = KVM_RUN;
static const unsigned long CLinuxUAPI_KVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CLinuxUAPI_KVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CLinuxUAPI_KVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CLinuxUAPI_KVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CLinuxUAPI_KVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CLinuxUAPI_KVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long CLinuxUAPI_KVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;

/* Constants newer than the installed headers (values from the kernel's UAPI). */
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
static const unsigned int CLinuxUAPI_MFD_CLOEXEC = MFD_CLOEXEC;
static const unsigned int CLinuxUAPI_MFD_HUGETLB = MFD_HUGETLB;
static const int CLinuxUAPI_MAP_HUGE_2MB = 21 << MAP_HUGE_SHIFT;
static const int CLinuxUAPI_MAP_HUGETLB = MAP_HUGETLB;
static const int CLinuxUAPI_MAP_NORESERVE = MAP_NORESERVE;

/* Fixed-arity ioctl.  Returns the result, or -errno; retries EINTR except for
 * KVM_RUN, where EINTR is the kick that stops a vCPU and must reach the caller. */
static inline long CLinuxUAPI_ioctl_value(int fd, unsigned long request, unsigned long value) {
    for (;;) {
        int r = ioctl(fd, request, value);
        if (r >= 0) return r;
        if (errno == EINTR && request != KVM_RUN) continue;
        return -errno;
    }
}
static inline long CLinuxUAPI_ioctl_pointer(int fd, unsigned long request, void *argument) {
    for (;;) {
        int r = ioctl(fd, request, argument);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        return -errno;
    }
}

static inline int CLinuxUAPI_open(const char *path, int flags) {
    int r = open(path, flags | O_CLOEXEC);
    return r >= 0 ? r : -errno;
}

static inline long CLinuxUAPI_memfd_create(const char *name, unsigned int flags) {
    long r = syscall(SYS_memfd_create, name, flags);
    return r >= 0 ? r : -errno;
}

/* mmap returning the address, or a negative errno cast to a pointer-sized integer. */
static inline long CLinuxUAPI_mmap(void *address, size_t length, int protection, int flags, int fd, long offset) {
    void *p = mmap(address, length, protection, flags, fd, offset);
    return p == MAP_FAILED ? -errno : (long)p;
}

/* The signal that kicks a vCPU thread out of KVM_RUN: a no-op handler installed
 * without SA_RESTART, so the ioctl returns EINTR; unblocked in the calling thread. */
static void CLinuxUAPI_kick_handler(int signal) { (void)signal; }
static inline int CLinuxUAPI_install_kick_signal(int signal) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = CLinuxUAPI_kick_handler;
    sigemptyset(&action.sa_mask);
    if (sigaction(signal, &action, NULL) != 0) return -errno;
    /* Threads may start with the signal blocked (the runtime blocks signals in
     * threads it creates); a blocked kick cannot wake a vCPU halted in the kernel. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signal);
    return -pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}
static inline int CLinuxUAPI_kick_thread(pthread_t thread, int signal) {
    return -pthread_kill(thread, signal);
}

static inline int CLinuxUAPI_gettid(void) { return (int)syscall(SYS_gettid); }

/* KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG with a caller-owned bitmap of
 * ceil(pages / 64) words: the structs hold a pointer, so they are built here. */
static inline long CLinuxUAPI_get_dirty_log(int vm, unsigned int slot, uint64_t *bitmap) {
    struct kvm_dirty_log log;
    memset(&log, 0, sizeof log);
    log.slot = slot;
    log.dirty_bitmap = bitmap;
    return CLinuxUAPI_ioctl_pointer(vm, KVM_GET_DIRTY_LOG, &log);
}
static inline long CLinuxUAPI_clear_dirty_log(int vm, unsigned int slot, uint64_t first_page, uint32_t pages, uint64_t *bitmap) {
    struct kvm_clear_dirty_log clear;
    memset(&clear, 0, sizeof clear);
    clear.slot = slot;
    clear.first_page = first_page;
    clear.num_pages = pages;
    clear.dirty_bitmap = bitmap;
    return CLinuxUAPI_ioctl_pointer(vm, KVM_CLEAR_DIRTY_LOG, &clear);
}

/* kvm_cpuid2 with room for entries: Swift cannot express the flexible array. */
#define CLINUXUAPI_MAX_CPUID_ENTRIES 256
#pragma clang diagnostic push
/* The header's flexible array is followed by its storage: the layout KVM reads. */
#pragma clang diagnostic ignored "-Wgnu-variable-sized-type-not-at-end"
struct CLinuxUAPI_cpuid {
    struct kvm_cpuid2 header;
    struct kvm_cpuid_entry2 entries[CLINUXUAPI_MAX_CPUID_ENTRIES];
};
#pragma clang diagnostic pop

_Static_assert(sizeof(struct kvm_userspace_memory_region) == 32, "layout Swift relies on");
_Static_assert(sizeof(struct kvm_dirty_log) == 16, "layout Swift relies on");
_Static_assert(sizeof(struct kvm_regs) == 144, "layout Swift relies on");
_Static_assert(sizeof(struct kvm_cpuid_entry2) == 40, "layout Swift relies on");
_Static_assert(sizeof(struct uffd_msg) == 32, "layout Swift relies on");

#endif
