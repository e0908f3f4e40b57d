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
#include <stdio.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <linux/sockios.h>
#include <sys/uio.h>
#include <linux/errqueue.h>
#include <sys/prctl.h>

/* ---- system ioctls (on /dev/kvm) */
static const unsigned long CLinuxUAPI_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CLinuxUAPI_KVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CLinuxUAPI_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CLinuxUAPI_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CLinuxUAPI_KVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long CLinuxUAPI_KVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;
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
static const unsigned long CLinuxUAPI_KVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
static const unsigned long CLinuxUAPI_KVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
static const unsigned long CLinuxUAPI_KVM_GET_PIT2 = KVM_GET_PIT2;
static const unsigned long CLinuxUAPI_KVM_SET_PIT2 = KVM_SET_PIT2;
static const unsigned long CLinuxUAPI_KVM_GET_CLOCK = KVM_GET_CLOCK;
static const unsigned long CLinuxUAPI_KVM_SET_CLOCK = KVM_SET_CLOCK;
/* ---- vCPU ioctls */
static const unsigned long CLinuxUAPI_KVM_RUN = KVM_RUN;
static const unsigned long CLinuxUAPI_KVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CLinuxUAPI_KVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CLinuxUAPI_KVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CLinuxUAPI_KVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CLinuxUAPI_KVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CLinuxUAPI_KVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long CLinuxUAPI_KVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;
static const unsigned long CLinuxUAPI_KVM_SET_TSC_KHZ = KVM_SET_TSC_KHZ;
static const unsigned long CLinuxUAPI_KVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long CLinuxUAPI_KVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long CLinuxUAPI_KVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long CLinuxUAPI_KVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long CLinuxUAPI_KVM_SET_XCRS = KVM_SET_XCRS;
static const unsigned long CLinuxUAPI_KVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long CLinuxUAPI_KVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long CLinuxUAPI_KVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long CLinuxUAPI_KVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long CLinuxUAPI_KVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long CLinuxUAPI_KVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long CLinuxUAPI_KVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long CLinuxUAPI_KVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;

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

/* ---- residency of guest RAM (HostMapping.residentChunks).
 * PAGEMAP_SCAN (Linux 6.7) on /proc/self/pagemap: one ioctl returns the ranges
 * of a mapping whose pages are present or swapped.  The installed headers
 * predate it, so its structs and numbers are defined here (values and layout
 * from the kernel's include/uapi/linux/fs.h), under our prefix so a newer
 * header cannot clash. */
struct CLinuxUAPI_page_region {
    uint64_t start;
    uint64_t end;
    uint64_t categories;
};
struct CLinuxUAPI_pm_scan_arg {
    uint64_t size;
    uint64_t flags;
    uint64_t start;
    uint64_t end;
    uint64_t walk_end;
    uint64_t vec;
    uint64_t vec_len;
    uint64_t max_pages;
    uint64_t category_inverted;
    uint64_t category_mask;
    uint64_t category_anyof_mask;
    uint64_t return_mask;
};
static const uint64_t CLinuxUAPI_PAGE_IS_PRESENT = 1 << 3;
static const uint64_t CLinuxUAPI_PAGE_IS_SWAPPED = 1 << 4;
static const unsigned long CLinuxUAPI_PAGEMAP_SCAN = _IOWR('f', 16, struct CLinuxUAPI_pm_scan_arg);
/* The regions of [start, end) with any of `categories`, at most `count` of
 * them; the walk's stopping address goes to *walk_end.  Returns the number of
 * regions filled, or -errno (ENOTTY/EINVAL before Linux 6.7). */
static inline long CLinuxUAPI_pagemap_scan(int fd, uint64_t start, uint64_t end, uint64_t categories,
                                           struct CLinuxUAPI_page_region *regions, uint64_t count, uint64_t *walk_end) {
    struct CLinuxUAPI_pm_scan_arg arg;
    memset(&arg, 0, sizeof arg);
    arg.size = sizeof arg;
    arg.start = start;
    arg.end = end;
    arg.vec = (uint64_t)(uintptr_t)regions;
    arg.vec_len = count;
    arg.category_anyof_mask = categories;
    arg.return_mask = categories;
    long r = CLinuxUAPI_ioctl_pointer(fd, CLinuxUAPI_PAGEMAP_SCAN, &arg);
    *walk_end = arg.walk_end;
    return r;
}
/* ---- userfaultfd (the Userfaultfd target is the only user).
 * Feature bits newer than the installed headers, from the kernel's
 * include/uapi/linux/userfaultfd.h, under our prefix. */
static const uint64_t CLinuxUAPI_UFFD_API = UFFD_API;
static const uint64_t CLinuxUAPI_UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0;
static const uint64_t CLinuxUAPI_UFFD_FEATURE_MISSING_HUGETLBFS = 1 << 4;
static const uint64_t CLinuxUAPI_UFFD_FEATURE_MISSING_SHMEM = 1 << 5;
static const uint64_t CLinuxUAPI_UFFD_FEATURE_THREAD_ID = 1 << 8;
static const uint64_t CLinuxUAPI_UFFD_FEATURE_MINOR_HUGETLBFS = 1 << 9;
static const uint64_t CLinuxUAPI_UFFD_FEATURE_MINOR_SHMEM = 1 << 10;
static const uint64_t CLinuxUAPI_UFFD_FEATURE_EXACT_ADDRESS = 1 << 11;
static const uint64_t CLinuxUAPI_UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12;
static const uint64_t CLinuxUAPI_UFFD_FEATURE_WP_UNPOPULATED = 1 << 13;     /* Linux 6.4 */
static const uint64_t CLinuxUAPI_UFFD_FEATURE_POISON = 1 << 14;
static const uint64_t CLinuxUAPI_UFFD_FEATURE_WP_ASYNC = 1 << 15;           /* Linux 6.7 */
static const uint64_t CLinuxUAPI_UFFDIO_REGISTER_MODE_MISSING = UFFDIO_REGISTER_MODE_MISSING;
static const uint64_t CLinuxUAPI_UFFDIO_REGISTER_MODE_WP = UFFDIO_REGISTER_MODE_WP;
static const uint64_t CLinuxUAPI_UFFDIO_REGISTER_MODE_MINOR = UFFDIO_REGISTER_MODE_MINOR;
static const uint64_t CLinuxUAPI_UFFD_PAGEFAULT_FLAG_WRITE = UFFD_PAGEFAULT_FLAG_WRITE;
static const uint64_t CLinuxUAPI_UFFD_PAGEFAULT_FLAG_WP = UFFD_PAGEFAULT_FLAG_WP;
static const uint64_t CLinuxUAPI_UFFD_PAGEFAULT_FLAG_MINOR = UFFD_PAGEFAULT_FLAG_MINOR;

/* A userfaultfd (close-on-exec, non-blocking), or -errno. */
static inline int CLinuxUAPI_userfaultfd(void) {
    long r = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    return r >= 0 ? (int)r : -errno;
}
/* UFFDIO_API: asks for `features`; the kernel's answer goes to *features and *ioctls. */
static inline long CLinuxUAPI_uffd_api(int fd, uint64_t *features, uint64_t *ioctls) {
    struct uffdio_api api;
    memset(&api, 0, sizeof api);
    api.api = UFFD_API;
    api.features = *features;
    long r = CLinuxUAPI_ioctl_pointer(fd, UFFDIO_API, &api);
    *features = api.features;
    *ioctls = api.ioctls;
    return r;
}
/* UFFDIO_REGISTER; the range's supported ioctls go to *ioctls. */
static inline long CLinuxUAPI_uffd_register(int fd, uint64_t start, uint64_t length, uint64_t mode, uint64_t *ioctls) {
    struct uffdio_register reg;
    memset(&reg, 0, sizeof reg);
    reg.range.start = start;
    reg.range.len = length;
    reg.mode = mode;
    long r = CLinuxUAPI_ioctl_pointer(fd, UFFDIO_REGISTER, &reg);
    *ioctls = reg.ioctls;
    return r;
}
static inline long CLinuxUAPI_uffd_unregister(int fd, uint64_t start, uint64_t length) {
    struct uffdio_range range = { .start = start, .len = length };
    return CLinuxUAPI_ioctl_pointer(fd, UFFDIO_UNREGISTER, &range);
}
static inline long CLinuxUAPI_uffd_wake(int fd, uint64_t start, uint64_t length) {
    struct uffdio_range range = { .start = start, .len = length };
    return CLinuxUAPI_ioctl_pointer(fd, UFFDIO_WAKE, &range);
}
static inline long CLinuxUAPI_uffd_writeprotect(int fd, uint64_t start, uint64_t length, int protect, int wake) {
    struct uffdio_writeprotect wp;
    memset(&wp, 0, sizeof wp);
    wp.range.start = start;
    wp.range.len = length;
    wp.mode = (protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0) | (wake ? 0 : UFFDIO_WRITEPROTECT_MODE_DONTWAKE);
    return CLinuxUAPI_ioctl_pointer(fd, UFFDIO_WRITEPROTECT, &wp);
}
/* UFFDIO_COPY: bytes copied go to *copied (may be short with -EAGAIN). */
static inline long CLinuxUAPI_uffd_copy(int fd, uint64_t destination, const void *source, uint64_t length, int wake, int protect, int64_t *copied) {
    struct uffdio_copy copy;
    memset(&copy, 0, sizeof copy);
    copy.dst = destination;
    copy.src = (uint64_t)(uintptr_t)source;
    copy.len = length;
    copy.mode = (wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE) | (protect ? UFFDIO_COPY_MODE_WP : 0);
    long r = CLinuxUAPI_ioctl_pointer(fd, UFFDIO_COPY, &copy);
    *copied = copy.copy;
    return r;
}
static inline long CLinuxUAPI_uffd_zeropage(int fd, uint64_t start, uint64_t length, int wake, int64_t *zeroed) {
    struct uffdio_zeropage zero;
    memset(&zero, 0, sizeof zero);
    zero.range.start = start;
    zero.range.len = length;
    zero.mode = wake ? 0 : UFFDIO_ZEROPAGE_MODE_DONTWAKE;
    long r = CLinuxUAPI_ioctl_pointer(fd, UFFDIO_ZEROPAGE, &zero);
    *zeroed = zero.zeropage;
    return r;
}
static inline long CLinuxUAPI_uffd_continue(int fd, uint64_t start, uint64_t length, int wake, int64_t *mapped) {
    struct uffdio_continue cont;
    memset(&cont, 0, sizeof cont);
    cont.range.start = start;
    cont.range.len = length;
    cont.mode = wake ? 0 : UFFDIO_CONTINUE_MODE_DONTWAKE;
    long r = CLinuxUAPI_ioctl_pointer(fd, UFFDIO_CONTINUE, &cont);
    *mapped = cont.mapped;
    return r;
}
/* Reads up to `max` messages: each page fault's address, flags and faulting
 * thread (its TID with UFFD_FEATURE_THREAD_ID, else 0) are stored in order;
 * any other event counts in *others.  Returns the number of faults, 0 when
 * none is waiting (EAGAIN), or -errno. */
static inline int CLinuxUAPI_uffd_read_faults(int fd, uint64_t *addresses, uint64_t *flags, uint32_t *threads, int max, int *others) {
    struct uffd_msg messages[64];
    if (max > 64) max = 64;
    *others = 0;
    ssize_t r;
    do { r = read(fd, messages, sizeof(struct uffd_msg) * (size_t)max); } while (r < 0 && errno == EINTR);
    if (r < 0) return errno == EAGAIN ? 0 : -errno;
    int count = 0;
    for (ssize_t i = 0; i < r / (ssize_t)sizeof(struct uffd_msg); i++) {
        if (messages[i].event != UFFD_EVENT_PAGEFAULT) { (*others)++; continue; }
        addresses[count] = messages[i].arg.pagefault.address;
        flags[count] = messages[i].arg.pagefault.flags;
        threads[count] = messages[i].arg.pagefault.feat.ptid;
        count++;
    }
    return count;
}
/* Waits until `fd` is readable or `other` (an eventfd, or -1) is: returns
 * 1 for fd, 2 for other (3 both), 0 on timeout, -errno. */
static inline int CLinuxUAPI_wait_either(int fd, int other, int milliseconds) {
    struct pollfd fds[2] = { { .fd = fd, .events = POLLIN }, { .fd = other, .events = POLLIN } };
    int r;
    do { r = poll(fds, other >= 0 ? 2 : 1, milliseconds); } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    return ((fds[0].revents & (POLLIN | POLLERR | POLLHUP)) ? 1 : 0) | ((other >= 0 && (fds[1].revents & POLLIN)) ? 2 : 0);
}

/* lseek's SEEK_DATA / SEEK_HOLE (glibc declares them only under _GNU_SOURCE).
 * Returns the offset, or -errno (ENXIO: no data at or after `offset`). */
static const int CLinuxUAPI_SEEK_DATA = 3;
static const int CLinuxUAPI_SEEK_HOLE = 4;
static inline long CLinuxUAPI_lseek(int fd, long offset, int whence) {
    off_t r = lseek(fd, offset, whence);
    return r >= 0 ? (long)r : -errno;
}

/* ---- sockets for migration channels.  Each returns a descriptor or -errno;
 * name-resolution failures return CLINUXUAPI_EAI_BASE - EAI code (EAI codes are negative). */
#define CLINUXUAPI_EAI_BASE (-100000)
/* Connections a listener queues before `accept`: the main channel plus QEMU's
 * largest multifd-channels (255), so a source opening all of them at once
 * never waits on a full queue (TCP would drop the SYN and retry a second later). */
#define CLINUXUAPI_LISTEN_BACKLOG 256
/* On TCP no Nagle delay, so the last small frames of a switchover and the
 * return-path answer go out at once (fails harmlessly on Unix sockets).  The
 * buffers are left to the kernel's autotuning (tcp_wmem, tcp_rmem), as QEMU
 * leaves them: fixed sizes turn it off, and a receive window held at 4 MiB made
 * the receiving thread on loopback do the sender's transmitting as its window
 * reopened (multifd, 2 channels: 438 against 387 ms, destination CPU 0.38
 * against 0.24 s). */
static inline int CLinuxUAPI_socket_tune(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}
/* Bytes written to TCP socket `fd` that it has not sent yet (SIOCOUTQNSD), or -errno. */
static inline int CLinuxUAPI_socket_unsent(int fd) {
    int bytes = 0;
    return ioctl(fd, SIOCOUTQNSD, &bytes) == 0 ? bytes : -errno;
}
/* TCP socket `fd`'s smoothed round trip and the least one it has seen, in
 * microseconds (TCP_INFO's tcpi_rtt at offset 68, tcpi_min_rtt at 148, Linux
 * 4.10, of linux/tcp.h's struct tcp_info).  0, -errno on failure, -EOPNOTSUPP
 * when the kernel's struct is too short. */
static inline int CLinuxUAPI_socket_round_trips(int fd, unsigned int *smoothed, unsigned int *least) {
    unsigned char info[232] = {0};
    socklen_t length = sizeof info;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &length) != 0) return -errno;
    if (length < 152) return -EOPNOTSUPP;
    memcpy(smoothed, info + 68, sizeof *smoothed);
    memcpy(least, info + 148, sizeof *least);
    return 0;
}
/* Bytes TCP socket `fd` holds: unsent plus sent and not acknowledged (SIOCOUTQ), or -errno. */
static inline int CLinuxUAPI_socket_queued(int fd) {
    int bytes = 0;
    return ioctl(fd, SIOCOUTQ, &bytes) == 0 ? bytes : -errno;
}
/* Makes TCP try at once to send what `fd` holds unsent (setting TCP_NODELAY
 * pushes pending frames); 0 or -errno. */
static inline int CLinuxUAPI_socket_push(int fd) {
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0 ? 0 : -errno;
}
/* Waits for a non-blocking connect in progress on `fd` to finish (0 or
 * -SO_ERROR) or for `cancel_fd` to be signalled (-ECANCELED). */
static inline int CLinuxUAPI_connect_wait(int fd, int cancel_fd) {
    for (;;) {
        struct pollfd p[2] = { { .fd = fd, .events = POLLOUT }, { .fd = cancel_fd, .events = POLLIN } };
        int n = poll(p, cancel_fd >= 0 ? 2 : 1, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -errno;
        if (cancel_fd >= 0 && (p[1].revents & POLLIN)) return -ECANCELED;
        if (p[0].revents == 0) continue;
        int so_error = 0;
        socklen_t size = sizeof so_error;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &size) != 0) return -errno;
        return -so_error;
    }
}
/* A connect that a write to `cancel_fd` (an eventfd; -1 for none) abandons
 * with -ECANCELED.  TCP connects in the background and is polled (a connect
 * interrupted by a signal goes on in the background too, so it is polled, never
 * restarted); a Unix socket whose listener's backlog is full refuses a
 * non-blocking connect with EAGAIN, so that one is retried every 10 ms.  The
 * socket is blocking again on return. */
static inline int CLinuxUAPI_connect_cancellable(int fd, const struct sockaddr *address, socklen_t length, int cancel_fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return -errno;
    int result;
    for (;;) {
        if (connect(fd, address, length) == 0) { result = 0; break; }
        int error = errno;
        if (error == EISCONN) { result = 0; break; }
        if (error == EINPROGRESS || error == EALREADY || error == EINTR) { result = CLinuxUAPI_connect_wait(fd, cancel_fd); break; }
        if (error == EAGAIN && address->sa_family == AF_UNIX) {
            struct pollfd c = { .fd = cancel_fd, .events = POLLIN };
            if (cancel_fd < 0) { usleep(10000); continue; }
            if (poll(&c, 1, 10) > 0) { result = -ECANCELED; break; }
            continue;
        }
        result = -error;
        break;
    }
    fcntl(fd, F_SETFL, flags);
    return result;
}
static inline int CLinuxUAPI_tcp_open(const char *host, int port, int listening, int cancel_fd) {
    struct addrinfo hints, *result = NULL, *ai;
    char service[16];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = listening ? AI_PASSIVE : 0;
    snprintf(service, sizeof service, "%d", port);
    int rc = getaddrinfo(host && host[0] ? host : NULL, service, &hints, &result);
    if (rc != 0) return CLINUXUAPI_EAI_BASE + rc;
    int error = ECONNREFUSED;
    for (ai = result; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) { error = errno; continue; }
        CLinuxUAPI_socket_tune(fd);
        if (listening) {
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, CLINUXUAPI_LISTEN_BACKLOG) == 0) { freeaddrinfo(result); return fd; }
        } else {
            int r = CLinuxUAPI_connect_cancellable(fd, ai->ai_addr, ai->ai_addrlen, cancel_fd);
            if (r == 0) { freeaddrinfo(result); return fd; }
            errno = -r;
            if (r == -ECANCELED) { close(fd); freeaddrinfo(result); return r; }
        }
        error = errno;
        close(fd);
    }
    freeaddrinfo(result);
    return -error;
}
static inline int CLinuxUAPI_unix_open(const char *path, int listening, int cancel_fd) {
    struct sockaddr_un address;
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof address.sun_path) return -ENAMETOOLONG;
    strcpy(address.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    CLinuxUAPI_socket_tune(fd);
    int r;
    if (listening) {
        unlink(path);
        r = bind(fd, (struct sockaddr *)&address, sizeof address);
        if (r == 0) r = listen(fd, CLINUXUAPI_LISTEN_BACKLOG);
    } else {
        r = CLinuxUAPI_connect_cancellable(fd, (struct sockaddr *)&address, sizeof address, cancel_fd);
        if (r != 0) { close(fd); return r; }
    }
    if (r != 0) { int error = errno; close(fd); return -error; }
    return fd;
}
/* The port a listening TCP socket is bound to (after binding port 0). */
static inline int CLinuxUAPI_local_port(int fd) {
    struct sockaddr_storage address;
    socklen_t length = sizeof address;
    if (getsockname(fd, (struct sockaddr *)&address, &length) != 0) return -errno;
    if (address.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&address)->sin_port);
    if (address.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&address)->sin6_port);
    return -EAFNOSUPPORT;
}
static inline int CLinuxUAPI_is_socket(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -errno;
    return S_ISSOCK(st.st_mode) ? 1 : 0;
}
/* A socket read that waits `milliseconds` (0: forever) for data fails with EAGAIN (SO_RCVTIMEO). */
static inline int CLinuxUAPI_set_receive_timeout(int fd, int milliseconds) {
    struct timeval t = { .tv_sec = milliseconds / 1000, .tv_usec = (milliseconds % 1000) * 1000 };
    return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof t) == 0 ? 0 : -errno;
}
/* A socket write that waits `milliseconds` (0: forever) for room fails with EAGAIN (SO_SNDTIMEO). */
static inline int CLinuxUAPI_set_send_timeout(int fd, int milliseconds) {
    struct timeval t = { .tv_sec = milliseconds / 1000, .tv_usec = (milliseconds % 1000) * 1000 };
    return setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &t, sizeof t) == 0 ? 0 : -errno;
}
/* The eventfd that cancels a connect: created, signalled. */
static inline int CLinuxUAPI_eventfd(void) { int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); return fd >= 0 ? fd : -errno; }
/* Sets the calling thread's nice value (Linux: per thread); 0 or -errno.
 * Lowering it below 0 needs CAP_SYS_NICE. */
/* The calling thread's name as the kernel keeps it (comm: top -H, ps -L, perf); cut at 15 bytes. */
static inline void CLinuxUAPI_set_thread_name(const char *name) { (void)prctl(PR_SET_NAME, name, 0, 0, 0); }
static inline int CLinuxUAPI_set_thread_nice(int nice) {
    return setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice) == 0 ? 0 : -errno;
}
static inline void CLinuxUAPI_eventfd_signal(int fd) { uint64_t one = 1; ssize_t r = write(fd, &one, sizeof one); (void)r; }
/* Resets a non-blocking eventfd's count to 0 (a no-op when it is 0 already). */
static inline void CLinuxUAPI_eventfd_reset(int fd) { uint64_t count; ssize_t r = read(fd, &count, sizeof count); (void)r; }
/* poll for readability: 1 readable, 0 timeout, -errno. */
static inline int CLinuxUAPI_wait_readable(int fd, int milliseconds) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r;
    do { r = poll(&p, 1, milliseconds); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
static inline int CLinuxUAPI_wait_writable(int fd, int milliseconds) {
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    int r;
    do { r = poll(&p, 1, milliseconds); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
/* Waits until `fd` is writable (or has an error or hang-up) or eventfd `event`
 * is signalled, whose count it then resets: returns 1 for fd, 2 for event (3
 * both), 0 on timeout, -errno. */
static inline int CLinuxUAPI_wait_writable_or_event(int fd, int event, int milliseconds) {
    struct pollfd fds[2] = { { .fd = fd, .events = POLLOUT }, { .fd = event, .events = POLLIN } };
    int r;
    do { r = poll(fds, 2, milliseconds); } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    int rung = (fds[1].revents & POLLIN) ? 2 : 0;
    if (rung) CLinuxUAPI_eventfd_reset(event);
    return ((fds[0].revents & (POLLOUT | POLLERR | POLLHUP)) ? 1 : 0) | rung;
}
/* Bounds what TCP socket `fd` holds unsent (TCP_NOTSENT_LOWAT): it polls
 * writable, and a write goes ahead, only while under about half of `bytes`. */
static inline int CLinuxUAPI_socket_limit_unsent(int fd, int bytes) {
    return setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &bytes, sizeof bytes) == 0 ? 0 : -errno;
}
/* A blocking read of socket `fd` waits until `bytes` are there (or the stream
 * ends, or the receive buffer is under pressure: TCP wakes it then anyway), not
 * for the first one (SO_RCVLOWAT; 1 is the default).  0 or -errno. */
static inline int CLinuxUAPI_socket_receive_lowat(int fd, int bytes) {
    return setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &bytes, sizeof bytes) == 0 ? 0 : -errno;
}
/* Socket `fd`'s receive buffer in bytes as the kernel holds it (SO_RCVBUF:
 * payload and overhead, grown by TCP's autotuning), or -errno. */
static inline int CLinuxUAPI_socket_receive_buffer(int fd) {
    int bytes = 0;
    socklen_t length = sizeof bytes;
    return getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, &length) == 0 ? bytes : -errno;
}
/* Whether `fd` is a TCP socket: 1 yes, 0 no (a file, a pipe, another socket). */
static inline int CLinuxUAPI_socket_is_tcp(int fd) {
    int protocol = 0;
    socklen_t length = sizeof protocol;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &length) != 0) return 0;
    return protocol == IPPROTO_TCP;
}
/* Reads what socket `fd` holds, at most `count` bytes, without waiting: bytes
 * read, 0 at the end of the stream, -EAGAIN when it holds none, or -errno. */
static inline long CLinuxUAPI_read_nowait(int fd, void *buffer, size_t count) {
    long r;
    do { r = recv(fd, buffer, count, MSG_DONTWAIT); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
/* Paces what TCP socket `fd` sends to at most `bytes_per_second` (SO_MAX_PACING_RATE;
 * TCP paces by itself, no fq qdisc needed); ~0 lifts the limit.  0 or -errno. */
static inline int CLinuxUAPI_socket_max_pacing_rate(int fd, unsigned long long bytes_per_second) {
    unsigned long long rate = bytes_per_second;
    return setsockopt(fd, SOL_SOCKET, 47 /* SO_MAX_PACING_RATE */, &rate, sizeof rate) == 0 ? 0 : -errno;
}
/* The least time TCP socket `fd` waits for an acknowledgement before it resends
 * (TCP_RTO_MIN_US, Linux 6.15; the installed headers predate it; the kernel rounds
 * up to its tick).  The default, 200 ms (or net.ipv4.tcp_rto_min_us), is what a
 * lost last segment of a burst costs when the tail-loss probe is lost too.  0 or
 * -errno: EINVAL outside two ticks to 200 ms, ENOPROTOOPT before 6.15. */
#ifndef TCP_RTO_MIN_US
#define TCP_RTO_MIN_US 45
#endif
static inline int CLinuxUAPI_socket_least_retransmit_wait(int fd, int microseconds) {
    return setsockopt(fd, IPPROTO_TCP, TCP_RTO_MIN_US, &microseconds, sizeof microseconds) == 0 ? 0 : -errno;
}
/* TCP's latest delivery-rate sample for socket `fd` in bytes per second (TCP_INFO's
 * tcpi_delivery_rate, Linux 4.9): what the path delivered while the sender kept it busy.
 * 0 when the sample was application-limited (it says nothing about the path) or the
 * kernel has none; -errno on failure.  Offsets from linux/tcp.h's struct tcp_info (glibc's
 * netinet/tcp.h has an older one): the app-limited bit is bit 0 of byte 7, the rate at 160. */
static inline long long CLinuxUAPI_socket_delivery_rate(int fd) {
    unsigned char info[232] = {0};
    socklen_t length = sizeof info;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &length) != 0) return -errno;
    if (length < 168 || (info[7] & 1)) return 0;
    unsigned long long rate;
    memcpy(&rate, info + 160, sizeof rate);
    return rate > (unsigned long long)__LONG_LONG_MAX__ ? __LONG_LONG_MAX__ : (long long)rate;
}
/* Bytes of TCP socket `fd`'s stream that reached the peer, as TCP counts for its
 * own rate samples: segments delivered, selectively acknowledged ones included
 * (TCP_INFO's tcpi_delivered, Linux 4.18, at offset 192 of linux/tcp.h's struct
 * tcp_info), times the sending MSS (tcpi_snd_mss, offset 16).  Unlike the
 * cumulative acknowledged count, it does not jump when a lost segment's resend
 * fills the hole in front of a run already received.  -errno on failure,
 * -EOPNOTSUPP when the kernel's struct is too short for it. */
static inline long long CLinuxUAPI_socket_delivered_bytes(int fd) {
    unsigned char info[232] = {0};
    socklen_t length = sizeof info;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &length) != 0) return -errno;
    if (length < 196) return -EOPNOTSUPP;
    unsigned int delivered, mss;
    memcpy(&delivered, info + 192, sizeof delivered);
    memcpy(&mss, info + 16, sizeof mss);
    return (long long)delivered * (long long)mss;
}
static inline long CLinuxUAPI_read(int fd, void *buffer, size_t count) {
    long r;
    do { r = read(fd, buffer, count); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
static inline long CLinuxUAPI_write(int fd, const void *buffer, size_t count) {
    long r;
    do { r = write(fd, buffer, count); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
/* ---- vectored I/O for gather writes and scatter reads (at most
 * CLINUXUAPI_IOV_MAX vectors per call: the kernel's UIO_MAXIOV, EINVAL beyond). */
#define CLINUXUAPI_IOV_MAX 1024
static inline long CLinuxUAPI_writev(int fd, const struct iovec *vectors, int count) {
    long r;
    do { r = writev(fd, vectors, count); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
/* writev on a TCP socket, at most `burst` bytes, sent with MSG_EOR: the kernel
 * then never appends later writes to these bytes' buffer, so it sends them as a
 * train of at most `burst` bytes.  Written whole, a paced socket's queue leaves in
 * 64 KiB trains (TSO/GSO sizing on a short round trip), and a shaped link's
 * queue holds each for the time 64 KiB takes to pass.  The bytes written, or -errno. */
static inline long CLinuxUAPI_write_burst(int fd, const struct iovec *vectors, int count, long burst) {
    struct iovec part[64];
    int used = 0;
    long total = 0;
    for (int i = 0; i < count && used < 64 && total < burst; i++) {
        if (vectors[i].iov_len == 0) continue;
        long room = burst - total;
        part[used].iov_base = vectors[i].iov_base;
        part[used].iov_len = (long)vectors[i].iov_len < room ? vectors[i].iov_len : (size_t)room;
        total += (long)part[used].iov_len;
        used++;
    }
    if (used == 0) return 0;
    struct msghdr message = {0};
    message.msg_iov = part;
    message.msg_iovlen = used;
    long r;
    do { r = sendmsg(fd, &message, MSG_EOR | MSG_NOSIGNAL); } while (r < 0 && errno == EINTR);
    /* A descriptor that is not a socket, or a socket that takes no MSG_EOR: whole. */
    if (r < 0 && (errno == EOPNOTSUPP || errno == ENOTSOCK)) return CLinuxUAPI_writev(fd, vectors, count);
    return r < 0 ? -errno : r;
}
static inline long CLinuxUAPI_readv(int fd, const struct iovec *vectors, int count) {
    long r;
    do { r = readv(fd, vectors, count); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

/* ---- MSG_ZEROCOPY (Documentation/networking/msg_zerocopy.rst).  The values
 * below are the kernel's; the fallbacks are for headers older than 4.14:
 *   SO_ZEROCOPY                 60         include/uapi/asm-generic/socket.h
 *   MSG_ZEROCOPY                0x4000000  include/linux/socket.h
 *   SO_EE_ORIGIN_ZEROCOPY       5          include/uapi/linux/errqueue.h
 *   SO_EE_CODE_ZEROCOPY_COPIED  1          include/uapi/linux/errqueue.h */
#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif
#ifndef SO_EE_ORIGIN_ZEROCOPY
#define SO_EE_ORIGIN_ZEROCOPY 5
#endif
#ifndef SO_EE_CODE_ZEROCOPY_COPIED
#define SO_EE_CODE_ZEROCOPY_COPIED 1
#endif
/* Turns MSG_ZEROCOPY on for the socket: 0 or -errno (EOPNOTSUPP on a Unix
 * socket, ENOTSOCK on a file: only TCP and UDP sockets support it). */
static inline int CLinuxUAPI_enable_zerocopy(int fd) {
    int one = 1;
    return setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof one) == 0 ? 0 : -errno;
}
/* One sendmsg(MSG_ZEROCOPY): the bytes queued (each call that queues any is
 * one completion id) or -errno (ENOBUFS: too many sends await completion). */
static inline long CLinuxUAPI_sendmsg_zerocopy(int fd, const struct iovec *vectors, int count) {
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = (struct iovec *)vectors;
    message.msg_iovlen = (size_t)count;
    long r;
    do { r = sendmsg(fd, &message, MSG_ZEROCOPY | MSG_NOSIGNAL); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
/* Takes one completion notification off the socket's error queue, waiting up
 * to `milliseconds` (-1: forever) for one: 1 with the completed send ids
 * first...last (inclusive, they wrap) and whether the kernel copied them, 0 on
 * timeout, or -errno: the socket's pending error (a reset peer), -EPIPE if the
 * socket was shut down with no notification queued, -EPROTO for a queued error
 * that is not a zero-copy notification. */
static inline int CLinuxUAPI_zerocopy_completion(int fd, int milliseconds, uint32_t *first, uint32_t *last, int *copied) {
    for (;;) {
        union { char bytes[CMSG_SPACE(sizeof(struct sock_extended_err) + sizeof(struct sockaddr_in6))]; struct cmsghdr align; } control;
        struct msghdr message;
        memset(&message, 0, sizeof message);
        message.msg_control = control.bytes;
        message.msg_controllen = sizeof control.bytes;
        if (recvmsg(fd, &message, MSG_ERRQUEUE | MSG_DONTWAIT) >= 0) {
            struct cmsghdr *c = CMSG_FIRSTHDR(&message);
            if (!c || !((c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR) ||
                        (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_RECVERR))) return -EPROTO;
            struct sock_extended_err error;
            memcpy(&error, CMSG_DATA(c), sizeof error);
            if (error.ee_origin != SO_EE_ORIGIN_ZEROCOPY || error.ee_errno != 0) return error.ee_errno ? -(int)error.ee_errno : -EPROTO;
            *first = error.ee_info;
            *last = error.ee_data;
            *copied = error.ee_code == SO_EE_CODE_ZEROCOPY_COPIED;
            return 1;
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return -errno;
        int so_error = 0;
        socklen_t size = sizeof so_error;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &size) == 0 && so_error != 0) return -so_error;
        struct pollfd p = { .fd = fd, .events = 0 };      /* POLLERR: always reported */
        int n = poll(&p, 1, milliseconds);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -errno;
        if (n == 0) return 0;
        if (p.revents & POLLNVAL) return -EBADF;
        if ((p.revents & POLLHUP) && !(p.revents & POLLERR)) return -EPIPE;
    }
}

/* Accepts one connection on a listening socket within `milliseconds` (-1:
 * forever): the new descriptor (blocking, close-on-exec, tuned), -ETIMEDOUT, or
 * -errno (EINVAL once the listener is shut down).  The listener is made
 * non-blocking, so a connection that vanishes between poll and accept sends
 * it back to poll instead of blocking in accept past the timeout. */
static inline int CLinuxUAPI_accept_within(int fd, int milliseconds) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -errno;
    if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return -errno;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int r = accept(fd, NULL, NULL);      /* accept4 is _GNU_SOURCE only; accept inherits no O_NONBLOCK */
        if (r >= 0) { fcntl(r, F_SETFD, FD_CLOEXEC); CLinuxUAPI_socket_tune(r); return r; }
        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) return -errno;
        int left = milliseconds;
        if (milliseconds >= 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            long elapsed = (now.tv_sec - start.tv_sec) * 1000L + (now.tv_nsec - start.tv_nsec) / 1000000L;
            if (elapsed >= milliseconds) return -ETIMEDOUT;
            left = milliseconds - (int)elapsed;
        }
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int n = poll(&p, 1, left);
        if (n < 0 && errno != EINTR) return -errno;
        if (n == 0) return -ETIMEDOUT;
        if (n > 0 && (p.revents & POLLNVAL)) return -EBADF;
        /* A listener shut down (interrupted) polls as hung up while accept still says
         * EAGAIN (Unix sockets): it will never accept again. */
        if (n > 0 && (p.revents & (POLLHUP | POLLERR))) return -EINVAL;
    }
}

/* A peer that vanishes must give EPIPE, not kill the process. */
static inline void CLinuxUAPI_ignore_sigpipe(void) { signal(SIGPIPE, SIG_IGN); }
static inline int CLinuxUAPI_shutdown(int fd) { return shutdown(fd, SHUT_RDWR) == 0 ? 0 : -errno; }
/* A descriptor from a QMP fdset used as a stream file: cut at `offset` when
 * writing (what lies before is kept), positioned at `offset` either way. */
static inline int CLinuxUAPI_position_file(int fd, int writing, long offset) {
    if ((writing && ftruncate(fd, offset) != 0) || lseek(fd, offset, SEEK_SET) != offset) return -errno;
    return 0;
}
/* A stream file from `offset` on: for writing, created if missing and cut at
 * `offset` (what lies before it is kept, as with QEMU's file:PATH,offset=N);
 * positioned at `offset` either way. */
static inline int CLinuxUAPI_open_file(const char *path, int writing, long offset) {
    int r = writing ? open(path, O_WRONLY | O_CREAT | (offset == 0 ? O_TRUNC : 0) | O_CLOEXEC, 0600) : open(path, O_RDONLY | O_CLOEXEC);
    if (r < 0) return -errno;
    if ((writing && offset > 0 && ftruncate(r, offset) != 0) || (offset > 0 && lseek(r, offset, SEEK_SET) != offset)) {
        int e = errno; close(r); return -e;
    }
    return r;
}

/* ---- files for migration: positioned and vectored I/O, O_DIRECT, holes.
 * O_DIRECT, FALLOC_FL_* are declared only under _GNU_SOURCE / in linux/falloc.h:
 * the kernel's values, defined here. */
static const int CLinuxUAPI_O_DIRECT = 040000;
#define CLINUXUAPI_FALLOC_FL_KEEP_SIZE 0x01
#define CLINUXUAPI_FALLOC_FL_PUNCH_HOLE 0x02
int fallocate(int fd, int mode, off_t offset, off_t len);
/* mode 0: read; 1: write, created if missing, never truncated; 2: read and write, created if missing.
 * `direct` adds O_DIRECT. */
static inline int CLinuxUAPI_open_migration_file(const char *path, int mode, int direct) {
    int flags = (mode == 0 ? O_RDONLY : mode == 1 ? O_WRONLY | O_CREAT : O_RDWR | O_CREAT) | O_CLOEXEC;
    if (direct) flags |= CLinuxUAPI_O_DIRECT;
    int r = open(path, flags, 0600);
    return r >= 0 ? r : -errno;
}
/* Whether `fd` has O_DIRECT set (1), not (0), or -errno; and whether it may be read (bit 0) / written (bit 1). */
static inline int CLinuxUAPI_file_flags(int fd, int *direct, int *access) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -errno;
    *direct = (flags & CLinuxUAPI_O_DIRECT) != 0;
    int mode = flags & O_ACCMODE;
    *access = (mode == O_RDONLY ? 1 : mode == O_WRONLY ? 2 : 3);
    return 0;
}
static inline long CLinuxUAPI_pread(int fd, void *buffer, size_t count, long offset) {
    long r;
    do { r = pread(fd, buffer, count, offset); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
static inline long CLinuxUAPI_pwrite(int fd, const void *buffer, size_t count, long offset) {
    long r;
    do { r = pwrite(fd, buffer, count, offset); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
static inline long CLinuxUAPI_preadv(int fd, const struct iovec *vectors, int count, long offset) {
    long r;
    do { r = preadv(fd, vectors, count, offset); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
static inline long CLinuxUAPI_pwritev(int fd, const struct iovec *vectors, int count, long offset) {
    long r;
    do { r = pwritev(fd, vectors, count, offset); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
static inline int CLinuxUAPI_punch_hole(int fd, long offset, long length) {
    return fallocate(fd, CLINUXUAPI_FALLOC_FL_PUNCH_HOLE | CLINUXUAPI_FALLOC_FL_KEEP_SIZE, offset, length) == 0 ? 0 : -errno;
}
/* The file system that holds fd: its magic number (statfs f_type) and the bytes an
   unprivileged writer may still allocate (f_bavail * f_bsize); 0 or -errno. */
static inline int CLinuxUAPI_file_system(int fd, long *type, uint64_t *available) {
    struct statfs facts;
    if (fstatfs(fd, &facts) != 0) return -errno;
    *type = (long)facts.f_type;
    *available = (uint64_t)facts.f_bavail * (uint64_t)facts.f_bsize;
    return 0;
}
#define CLINUXUAPI_EXT4_SUPER_MAGIC 0xEF53
/* Blocks for [offset, offset + length) (unwritten extents: they read as zero), the size kept. */
static inline int CLinuxUAPI_allocate(int fd, long offset, long length) {
    return fallocate(fd, CLINUXUAPI_FALLOC_FL_KEEP_SIZE, offset, length) == 0 ? 0 : -errno;
}
static inline int CLinuxUAPI_ftruncate(int fd, long length) { return ftruncate(fd, length) == 0 ? 0 : -errno; }
static inline int CLinuxUAPI_fdatasync(int fd) { return fdatasync(fd) == 0 ? 0 : -errno; }
/* The file's size, device and inode (which file a descriptor names), or -errno. */
static inline int CLinuxUAPI_file_identity(int fd, uint64_t *size, uint64_t *device, uint64_t *inode, int *regular) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -errno;
    *size = (uint64_t)st.st_size; *device = (uint64_t)st.st_dev; *inode = (uint64_t)st.st_ino;
    *regular = S_ISREG(st.st_mode);
    return 0;
}
/* The device and inode of the file `path` names (lstat: a socket's own file), or -errno. */
static inline int CLinuxUAPI_path_identity(const char *path, uint64_t *device, uint64_t *inode) {
    struct stat st;
    if (lstat(path, &st) != 0) return -errno;
    *device = (uint64_t)st.st_dev; *inode = (uint64_t)st.st_ino;
    return 0;
}
/* Bytes the file system allocated for the file (st_blocks, in 512-byte units), or -errno. */
static inline int CLinuxUAPI_file_allocated(int fd, uint64_t *bytes) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -errno;
    *bytes = (uint64_t)st.st_blocks * 512;
    return 0;
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

/* kvm_msrs / kvm_msr_list with room for entries (flexible arrays again). */
#define CLINUXUAPI_MAX_MSRS 64
#define CLINUXUAPI_MAX_MSR_INDICES 1024
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wgnu-variable-sized-type-not-at-end"
struct CLinuxUAPI_msrs {
    struct kvm_msrs header;
    struct kvm_msr_entry entries[CLINUXUAPI_MAX_MSRS];
};
struct CLinuxUAPI_msr_list {
    struct kvm_msr_list header;
    uint32_t indices[CLINUXUAPI_MAX_MSR_INDICES];
};
#pragma clang diagnostic pop

_Static_assert(sizeof(struct kvm_xsave) == 4096, "layout Swift relies on");
_Static_assert(sizeof(struct kvm_lapic_state) == 1024, "layout Swift relies on");
_Static_assert(sizeof(struct kvm_irqchip) == 520, "layout Swift relies on");
_Static_assert(sizeof(struct kvm_msr_entry) == 16, "layout Swift relies on");
_Static_assert(sizeof(struct kvm_userspace_memory_region) == 32, "layout Swift relies on");
_Static_assert(sizeof(struct kvm_dirty_log) == 16, "layout Swift relies on");
_Static_assert(sizeof(struct kvm_regs) == 144, "layout Swift relies on");
_Static_assert(sizeof(struct kvm_cpuid_entry2) == 40, "layout Swift relies on");
_Static_assert(sizeof(struct uffd_msg) == 32, "layout Swift relies on");
_Static_assert(sizeof(struct sock_extended_err) == 16, "the kernel's sock_extended_err");
_Static_assert(sizeof(struct iovec) == 16, "layout Swift relies on");
_Static_assert(sizeof(struct CLinuxUAPI_pm_scan_arg) == 96, "the kernel's pm_scan_arg");
_Static_assert(sizeof(struct CLinuxUAPI_page_region) == 24, "the kernel's page_region");

#endif
