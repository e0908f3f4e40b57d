/*
 * Descriptor passing on Unix stream sockets (SCM_RIGHTS), for the QMP socket.
 *
 * The CMSG_* helpers are macros Swift cannot import, and fcntl is variadic:
 * these fixed-arity entry points wrap them.  Each returns -errno on failure,
 * as everything in CLinuxUAPI does.
 */
#ifndef CLINUXUAPI_FDPASS_H
#define CLINUXUAPI_FDPASS_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

/* glibc declares it only under _GNU_SOURCE; the kernel's value. */
#ifndef MSG_CMSG_CLOEXEC
#define MSG_CMSG_CLOEXEC 0x40000000
#endif

/* The most descriptors one message may carry, as QEMU's socket chardev
 * (TCP_MAX_FDS).  More in one message are closed as they arrive. */
#define CLINUXUAPI_MAX_PASSED_FDS 16

/* A listening Unix stream socket at `path` (close-on-exec, backlog 16).  A
 * stale socket file there is replaced; anything else at `path` is left alone
 * and refused with -EEXIST. */
static inline int CLinuxUAPI_unix_listen(const char *path) {
    struct sockaddr_un address;
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof address.sun_path) return -ENAMETOOLONG;
    strcpy(address.sun_path, path);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) return -EEXIST;
        if (unlink(path) != 0) return -errno;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (bind(fd, (struct sockaddr *)&address, sizeof address) != 0 || listen(fd, 16) != 0) {
        int error = errno;
        close(fd);
        return -error;
    }
    return fd;
}

/* The next connection on a listening socket, blocking, close-on-exec (accept4
 * through syscall: glibc declares it only under _GNU_SOURCE).  -EINVAL once
 * the listener is shut down. */
static inline int CLinuxUAPI_unix_accept(int fd) {
    for (;;) {
        long r = syscall(SYS_accept4, fd, NULL, NULL, SOCK_CLOEXEC);
        if (r >= 0) return (int)r;
        if (errno != EINTR && errno != ECONNABORTED) return -errno;
    }
}

/* Waits until `fd` is readable, then reads up to `count` bytes and the
 * descriptors that came with them (SCM_RIGHTS), close-on-exec
 * (MSG_CMSG_CLOEXEC) and made blocking, as QEMU makes them: a sender's
 * O_NONBLOCK travels with the open file.  At most `capacity` descriptors land
 * in `fds` (`*received` of them); any beyond are closed.  The socket may be
 * non-blocking (another owner of its open file made it so): an empty read
 * waits in poll again.  Returns the bytes read (0 at the end of the stream)
 * or -errno. */
static inline long CLinuxUAPI_recv_with_fds(int fd, void *buffer, size_t count, int *fds, int capacity, int *received) {
    *received = 0;
    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, -1) < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        union { char space[CMSG_SPACE(sizeof(int) * CLINUXUAPI_MAX_PASSED_FDS)]; struct cmsghdr align; } control;
        struct iovec vector = { .iov_base = buffer, .iov_len = count };
        struct msghdr message;
        memset(&message, 0, sizeof message);
        message.msg_iov = &vector;
        message.msg_iovlen = 1;
        message.msg_control = control.space;
        message.msg_controllen = sizeof control.space;
        ssize_t r = recvmsg(fd, &message, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
            return -errno;
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&message); c != NULL; c = CMSG_NXTHDR(&message, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < n; i++) {
                int passed;
                memcpy(&passed, CMSG_DATA(c) + i * sizeof(int), sizeof passed);
                if (*received >= capacity) { close(passed); continue; }
                int flags = fcntl(passed, F_GETFL);
                if (flags >= 0 && (flags & O_NONBLOCK)) fcntl(passed, F_SETFL, flags & ~O_NONBLOCK);
                fds[(*received)++] = passed;
            }
        }
        return r;
    }
}

/* Sends `count` bytes (at least one: a stream socket carries descriptors only
 * with data) with `fd_count` descriptors attached (SCM_RIGHTS), as qemu.qmp's
 * send_fd_scm does.  No SIGPIPE.  Returns the bytes sent or -errno. */
static inline long CLinuxUAPI_send_with_fds(int fd, const void *buffer, size_t count, const int *fds, int fd_count) {
    if (fd_count < 0 || fd_count > CLINUXUAPI_MAX_PASSED_FDS) return -EINVAL;
    union { char space[CMSG_SPACE(sizeof(int) * CLINUXUAPI_MAX_PASSED_FDS)]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof control);
    struct iovec vector = { .iov_base = (void *)buffer, .iov_len = count };
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    if (fd_count > 0) {
        message.msg_control = control.space;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)fd_count);
        struct cmsghdr *c = CMSG_FIRSTHDR(&message);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)fd_count);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)fd_count);
    }
    ssize_t r;
    do { r = sendmsg(fd, &message, MSG_NOSIGNAL); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

/* A duplicate of `fd`, close-on-exec (F_DUPFD_CLOEXEC), or -errno. */
static inline int CLinuxUAPI_dup_cloexec(int fd) {
    int r = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    return r >= 0 ? r : -errno;
}

#endif
