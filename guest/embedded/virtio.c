/*
 * A virtio-mmio (version 2) driver core for ring 3: feature negotiation,
 * split virtqueues in the guest's own memory, buffers of one descriptor each.
 *
 * Ring 3 reaches the transport's registers directly: the low 4 GiB are mapped
 * user-accessible (entry.S), and each access exits to the VMM as MMIO.  No
 * interrupt is used (the IOAPIC pin stays masked): vCPU 0 polls the used ring
 * and the config space once per timer tick, so ring 0, which this host
 * emulates slowly, gains nothing but stays as it was.
 */
#include "guest.h"

#define REG_MAGIC 0x000
#define REG_VERSION 0x004
#define REG_DEVICE_ID 0x008
#define REG_DEVICE_FEATURES 0x010
#define REG_DEVICE_FEATURES_SEL 0x014
#define REG_DRIVER_FEATURES 0x020
#define REG_DRIVER_FEATURES_SEL 0x024
#define REG_QUEUE_SEL 0x030
#define REG_QUEUE_NUM_MAX 0x034
#define REG_QUEUE_NUM 0x038
#define REG_QUEUE_READY 0x044
#define REG_QUEUE_NOTIFY 0x050
#define REG_STATUS 0x070
#define REG_QUEUE_DESC_LOW 0x080
#define REG_QUEUE_DESC_HIGH 0x084
#define REG_QUEUE_DRIVER_LOW 0x090
#define REG_QUEUE_DRIVER_HIGH 0x094
#define REG_QUEUE_DEVICE_LOW 0x0a0
#define REG_QUEUE_DEVICE_HIGH 0x0a4

#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2

u32 mmio_read(u64 base, u64 offset) { return *(volatile u32 *)(base + offset); }
void mmio_write(u64 base, u64 offset, u32 value) { *(volatile u32 *)(base + offset) = value; }

int virtio_start(u64 base, u32 device_id, u64 wanted, u64 *negotiated) {
    if (mmio_read(base, REG_MAGIC) != 0x74726976 || mmio_read(base, REG_VERSION) != 2) return 0;
    if (mmio_read(base, REG_DEVICE_ID) != device_id) return 0;
    mmio_write(base, REG_STATUS, 0);
    mmio_write(base, REG_STATUS, STATUS_ACKNOWLEDGE);
    mmio_write(base, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    u64 offered = 0;
    for (u32 sel = 0; sel < 2; sel++) {
        mmio_write(base, REG_DEVICE_FEATURES_SEL, sel);
        offered |= (u64)mmio_read(base, REG_DEVICE_FEATURES) << (32 * sel);
    }
    u64 take = offered & wanted;
    for (u32 sel = 0; sel < 2; sel++) {
        mmio_write(base, REG_DRIVER_FEATURES_SEL, sel);
        mmio_write(base, REG_DRIVER_FEATURES, (u32)(take >> (32 * sel)));
    }
    mmio_write(base, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(mmio_read(base, REG_STATUS) & STATUS_FEATURES_OK)) {
        mmio_write(base, REG_STATUS, 128);       /* FAILED */
        return 0;
    }
    *negotiated = take;
    return 1;
}

void virtio_ready(u64 base) {
    mmio_write(base, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
}

/* Layout in `memory` (8 KiB): descriptors at 0 (1 KiB for 64), available ring
 * at 1 KiB, used ring at 4 KiB. */
int vq_setup(struct vq *q, u64 base, u32 index, void *memory) {
    mmio_write(base, REG_QUEUE_SEL, index);
    if (mmio_read(base, REG_QUEUE_READY)) return 0;
    u32 max = mmio_read(base, REG_QUEUE_NUM_MAX);
    if (max == 0) return 0;
    u32 size = VQ_MAX;
    while (size > max) size >>= 1;
    u8 *m = memory;
    for (u64 i = 0; i < VQ_MEMORY_SIZE; i++) m[i] = 0;
    q->mmio = base;
    q->index = index;
    q->size = size;
    q->desc = (u64 *)m;
    q->avail = (volatile u16 *)(m + 1024);
    q->used = (volatile u32 *)(m + 4096);
    q->num_free = (u16)size;
    for (u32 i = 0; i < size; i++) q->free_list[i] = (u16)(size - 1 - i);
    q->avail_idx = q->last_used = 0;
    q->avail[0] = 1;                     /* VRING_AVAIL_F_NO_INTERRUPT: this driver polls */
    u64 d = (u64)q->desc, a = (u64)q->avail, u = (u64)q->used;
    mmio_write(base, REG_QUEUE_NUM, size);
    mmio_write(base, REG_QUEUE_DESC_LOW, (u32)d);
    mmio_write(base, REG_QUEUE_DESC_HIGH, (u32)(d >> 32));
    mmio_write(base, REG_QUEUE_DRIVER_LOW, (u32)a);
    mmio_write(base, REG_QUEUE_DRIVER_HIGH, (u32)(a >> 32));
    mmio_write(base, REG_QUEUE_DEVICE_LOW, (u32)u);
    mmio_write(base, REG_QUEUE_DEVICE_HIGH, (u32)(u >> 32));
    mmio_write(base, REG_QUEUE_READY, 1);
    return 1;
}

int vq_add(struct vq *q, u64 address, u32 length, int device_writes, u64 cookie) {
    if (!q->num_free) return 0;
    u16 id = q->free_list[--q->num_free];
    q->desc[2 * id] = address;
    q->desc[2 * id + 1] = (u64)length | (u64)(device_writes ? DESC_F_WRITE : 0) << 32;
    q->cookie[id] = cookie;
    q->avail[2 + q->avail_idx % q->size] = id;
    barrier();
    q->avail_idx++;
    q->avail[1] = q->avail_idx;
    return 1;
}

void vq_kick(struct vq *q) {
    barrier();
    mmio_write(q->mmio, REG_QUEUE_NOTIFY, q->index);
}

int vq_reclaim(struct vq *q, u64 *cookie) {
    u16 used_idx = (u16)(q->used[0] >> 16);
    if (used_idx == q->last_used) return 0;
    barrier();
    u32 id = q->used[1 + 2 * (q->last_used % q->size)];
    q->last_used++;
    if (id >= q->size) return 0;         /* a device that broke the ring: ignore the entry */
    *cookie = q->cookie[id];
    q->free_list[q->num_free++] = (u16)id;
    return 1;
}
