/*
 * What the ring-3 parts of the embedded guest share: types, services, text
 * output, the page format, the allocator and the balloon driver's entry points.
 */
#ifndef FERRY_GUEST_H
#define FERRY_GUEST_H
#include "layout.h"

typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

static inline void service(u64 number, u64 a, u64 b) {
    __asm__ volatile("ud2" : : "a"(number), "D"(a), "S"(b) : "memory");
}
static inline void print(const char *buf, u64 len) { service(SVC_WRITE, (u64)buf, len); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

/* workload.c */
u64 put_str(char *out, u64 at, const char *s);
u64 put_dec(char *out, u64 at, u64 v);
u64 put_hex(char *out, u64 at, u64 v);
void write_page(u64 *page, u64 index, u64 generation);
int verify_page(const u64 *page, u64 index, u64 generation);
void mark_written(u64 index);
void mark_free(u64 index);
int key_is(const char *s, const char *key, const char **value);

/* alloc.c: 4 MiB blocks of free guest memory, first in first out.  Used by
 * vCPU 0 only (the free list, the churn, the balloon driver), so unlocked. */
void alloc_add_range(u64 start, u64 end);
int alloc_block(u64 *base);          /* 0 when nothing is free */
int alloc_free_block(u64 *base);     /* the free list only, never a hinted block */
void free_block(u64 base);
u64 alloc_free_blocks(void);

/* balloon.c: the virtio-balloon driver, polled by vCPU 0 once per timer tick. */
void balloon_probe(const char *cmdline);
void balloon_poll(void);
void balloon_tick(u64 ticks);          /* balloon_poll at most once per timer tick */
int balloon_take_hinted(u64 *base);  /* a reported block the device has used, for a caller out of memory */

/* virtio.c: virtio-mmio version 2 and split virtqueues, for one driver at a time. */
#define VIRTIO_ID_BALLOON 5
#define VQ_MAX 64                        /* entries per queue this driver uses */
struct vq {
    u64 mmio;                            /* the transport's base address */
    u32 index, size;
    u64 *desc;                           /* 16 bytes per entry: addr, len|flags<<32|next<<48 */
    volatile u16 *avail;                 /* flags, idx, ring[size] */
    volatile u32 *used;                  /* flags|idx<<16, then (id, len) pairs */
    u16 free_list[VQ_MAX], num_free, avail_idx, last_used;
    u64 cookie[VQ_MAX];
};
u32 mmio_read(u64 base, u64 offset);
void mmio_write(u64 base, u64 offset, u32 value);
int virtio_start(u64 base, u32 device_id, u64 wanted, u64 *negotiated);   /* reset .. FEATURES_OK */
int vq_setup(struct vq *q, u64 base, u32 index, void *memory);           /* memory: vq_memory_size() bytes, 4 KiB aligned */
void virtio_ready(u64 base);                                              /* DRIVER_OK */
int vq_add(struct vq *q, u64 address, u32 length, int device_writes, u64 cookie);   /* 0 if full */
void vq_kick(struct vq *q);
int vq_reclaim(struct vq *q, u64 *cookie);                                /* 1 per used buffer */
#define VQ_MEMORY_SIZE 8192

#endif
