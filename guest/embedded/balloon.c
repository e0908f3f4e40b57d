/*
 * The embedded guest's virtio-balloon driver (ring 3, polled by vCPU 0).
 *
 * It finds its device the way a Linux guest under microvm does, from
 * `virtio_mmio.device=SIZE@ADDRESS:IRQ` on the command line, and negotiates
 * VERSION_1, STATS_VQ (QEMU always offers it; the stats queue is then left
 * unused) and FREE_PAGE_HINT.  Queues are numbered by what the device offers:
 * inflate 0, deflate 1, stats 2 if offered, then the free-page queue.
 *
 * Inflate and deflate: the host's target (`num_pages`) is met in 4 MiB blocks
 * from the page allocator; each block goes to the device as 1024 PFNs in one
 * buffer, and `actual` is written once the device has used it.
 *
 * Free page hints, as Linux's driver does them: a new command id in the config
 * space starts a round; the driver echoes the id on the free-page queue, then
 * takes every block off the allocator's free list and reports it as a
 * device-writable buffer, then sends STOP (0).  The blocks stay out of the
 * free list until the device shows DONE (1); a caller that runs out of memory
 * meanwhile may take one back once the device has used it (balloon_take_hinted,
 * as Linux's shrinker does), and then writes to it show in the next dirty sync.
 */
#include "guest.h"

#define CONFIG_NUM_PAGES 0x100
#define CONFIG_ACTUAL 0x104
#define CONFIG_CMD_ID 0x108
#define REG_INTERRUPT_STATUS 0x060
#define REG_INTERRUPT_ACK 0x064
#define REG_STATUS 0x070
#define REG_CONFIG_GENERATION 0x0fc

#define F_STATS_VQ (1ull << 1)
#define F_FREE_PAGE_HINT (1ull << 3)
#define F_VERSION_1 (1ull << 32)
#define CMD_ID_STOP 0
#define CMD_ID_DONE 1

static u64 device;                       /* transport base, 0 when there is none */
static u64 features;
static struct vq inflate_q, deflate_q, hint_q;
static u8 queue_memory[3][VQ_MEMORY_SIZE] __attribute__((aligned(4096)));
static u32 pfn_buffers[VQ_MAX][BLOCK_PAGES] __attribute__((aligned(4096)));   /* one block's PFNs per inflate/deflate entry */
static u32 id_round, id_stop;            /* the command id echoed, and STOP (0) */

static u64 balloon_blocks[MAX_BLOCKS];   /* blocks inside the balloon */
static u64 balloon_count;
static u32 cmd_active;                   /* the id being (or last) reported */
static u64 hinted[MAX_BLOCKS];           /* reported blocks the device has used */
static u64 hinted_count;
static u64 hints_in_flight;              /* reported blocks not yet used */
static u64 reported_total, rounds, taken_back;
static u64 last_ticks;
static u32 generation_seen = 0xffffffff, cmd_id_cache = CMD_ID_DONE;
static char line[160];

static int parse_value(const char **s, u64 *v) {
    const char *p = *s;
    u64 x = 0;
    int digits = 0;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        p += 2;
        for (;; p++, digits++) {
            u64 d;
            if (*p >= '0' && *p <= '9') d = (u64)(*p - '0');
            else if (*p >= 'a' && *p <= 'f') d = (u64)(*p - 'a' + 10);
            else if (*p >= 'A' && *p <= 'F') d = (u64)(*p - 'A' + 10);
            else break;
            x = x * 16 + d;
        }
    } else {
        for (; *p >= '0' && *p <= '9'; p++, digits++) x = x * 10 + (u64)(*p - '0');
        if (*p == 'K' || *p == 'k') { x <<= 10; p++; }
    }
    *s = p;
    *v = x;
    return digits > 0;
}

static void say(const char *what, u64 a, const char *second, u64 b) {
    u64 at = put_str(line, 0, "BL ");
    at = put_str(line, at, what);
    at = put_dec(line, at, a);
    if (second) { at = put_str(line, at, second); at = put_dec(line, at, b); }
    line[at++] = '\n';
    print(line, at);
}

void balloon_probe(const char *cmdline) {
    for (const char *s = cmdline; s && *s;) {
        while (*s == ' ') s++;
        const char *v;
        u64 size, base, irq;
        if (key_is(s, "virtio_mmio.device", &v) && parse_value(&v, &size) && *v++ == '@'
            && parse_value(&v, &base) && *v++ == ':' && parse_value(&v, &irq) && size >= 0x200 && base < (4ull << 30)) {
            if (virtio_start(base, VIRTIO_ID_BALLOON, F_VERSION_1 | F_STATS_VQ | F_FREE_PAGE_HINT, &features)) {
                u32 hint_index = (features & F_STATS_VQ) ? 3 : 2;
                int ok = vq_setup(&inflate_q, base, 0, queue_memory[0]) && vq_setup(&deflate_q, base, 1, queue_memory[1]);
                if (ok && (features & F_FREE_PAGE_HINT)) ok = vq_setup(&hint_q, base, hint_index, queue_memory[2]);
                if (ok) {
                    virtio_ready(base);
                    device = base;
                    say("ready hint-queue=", (features & F_FREE_PAGE_HINT) ? hint_index : 0, " irq=", irq);
                    return;
                }
                mmio_write(base, REG_STATUS, 128);
            }
        }
        while (*s && *s != ' ') s++;
    }
}

/* Waits until the device has used every buffer of `q`, handing each cookie to `done`. */
static void drain(struct vq *q, void (*done)(u64)) {
    u64 cookie;
    while (q->num_free < q->size) {
        if (vq_reclaim(q, &cookie)) { if (done) done(cookie); }
        else cpu_relax();
    }
}

static void fill_pfns(u32 *buffer, u64 base) {
    for (u64 i = 0; i < BLOCK_PAGES; i++) buffer[i] = (u32)((base >> 12) + i);
}

static void inflate_used(u64 base) { balloon_blocks[balloon_count++] = base; }
static void deflate_used(u64 base) { free_block(base); }

/* Meets the target in whole blocks: inflate while a block fits, deflate while over. */
static void adjust(u32 target) {
    u64 base;
    u32 actual = (u32)(balloon_count * BLOCK_PAGES);
    if (actual + BLOCK_PAGES <= target) {
        for (u32 n = 0; actual + BLOCK_PAGES * (n + 1) <= target && n < inflate_q.size && alloc_block(&base); n++) {
            /* Not in use any more: the host may discard it. */
            for (u64 i = 0; i < BLOCK_PAGES; i++) mark_free((base >> 12) + i);
            fill_pfns(pfn_buffers[n], base);
            vq_add(&inflate_q, (u64)pfn_buffers[n], BLOCK_PAGES * 4, 0, base);
        }
        vq_kick(&inflate_q);
        drain(&inflate_q, inflate_used);
    } else if (actual > target) {
        for (u32 n = 0; balloon_count > 0 && (u32)(balloon_count * BLOCK_PAGES) > target && n < deflate_q.size; n++) {
            base = balloon_blocks[--balloon_count];
            fill_pfns(pfn_buffers[n], base);
            vq_add(&deflate_q, (u64)pfn_buffers[n], BLOCK_PAGES * 4, 0, base);
        }
        vq_kick(&deflate_q);
        drain(&deflate_q, deflate_used);
    } else {
        return;
    }
    u32 now = (u32)(balloon_count * BLOCK_PAGES);
    mmio_write(device, CONFIG_ACTUAL, now);
    say("actual=", now, " target=", target);
}

/* A used hint buffer: the block joins the reported ones, or (a command id) is dropped. */
static void hint_used(u64 cookie) {
    if (cookie == 0) return;
    hinted[hinted_count++] = cookie;
    hints_in_flight--;
}

/* The command id, re-read only when the config generation moved (a config
 * change the device announced), as Linux reads it on the config interrupt:
 * the field is only meaningful then (QEMU shows 0 once a round has started). */
static u32 cmd_id_received(void) {
    u32 generation = mmio_read(device, REG_CONFIG_GENERATION);
    if (generation != generation_seen) {
        generation_seen = generation;
        cmd_id_cache = mmio_read(device, CONFIG_CMD_ID);
    }
    return cmd_id_cache;
}

/* Reports every free block for command `id`, between the id's echo and STOP.
 * Stops early if the device shows another id (STOP before a sync, or newer). */
static void report(u32 id) {
    u64 cookie, base, blocks = 0;
    cmd_active = id;
    id_round = id;
    id_stop = CMD_ID_STOP;
    vq_add(&hint_q, (u64)&id_round, 4, 0, 0);
    vq_kick(&hint_q);
    for (;;) {
        if (cmd_id_received() != id) break;
        while (vq_reclaim(&hint_q, &cookie)) hint_used(cookie);
        if (hint_q.num_free <= 1) { cpu_relax(); continue; }      /* one entry stays for STOP */
        u64 added = 0;
        while (hint_q.num_free > 1 && alloc_free_block(&base)) {
            vq_add(&hint_q, base, BLOCK_SIZE, 1, base);
            hints_in_flight++;
            added++;
        }
        if (!added) break;                                       /* the free list is empty */
        blocks += added;
        vq_kick(&hint_q);
    }
    vq_add(&hint_q, (u64)&id_stop, 4, 0, 0);
    vq_kick(&hint_q);
    drain(&hint_q, hint_used);          /* the id buffers are reused next round */
    reported_total += blocks;
    rounds++;
    u64 at = put_str(line, 0, "BL hints round=");
    at = put_dec(line, at, rounds);
    at = put_str(line, at, " blocks=");
    at = put_dec(line, at, blocks);
    at = put_str(line, at, " taken-back=");
    at = put_dec(line, at, taken_back);
    line[at++] = '\n';
    print(line, at);
}

int balloon_take_hinted(u64 *base) {
    u64 cookie;
    if (!device || !(features & F_FREE_PAGE_HINT)) return 0;
    while (vq_reclaim(&hint_q, &cookie)) hint_used(cookie);
    if (!hinted_count) return 0;
    *base = hinted[--hinted_count];
    taken_back++;
    return 1;
}

/* Every reported block goes back to the allocator (DONE). */
static void return_hinted(void) {
    drain(&hint_q, hint_used);
    u64 n = hinted_count;
    while (hinted_count) free_block(hinted[--hinted_count]);
    if (n) say("hints done returned=", n, 0, 0);
}

void balloon_poll(void) {
    if (!device) return;
    u32 isr = mmio_read(device, REG_INTERRUPT_STATUS);
    if (isr) mmio_write(device, REG_INTERRUPT_ACK, isr);
    if (mmio_read(device, REG_STATUS) & 64) return;     /* DEVICE_NEEDS_RESET: leave it alone */
    if (features & F_FREE_PAGE_HINT) {
        u32 id = cmd_id_received();
        if (id == CMD_ID_DONE) { if (hinted_count || hints_in_flight) return_hinted(); }
        else if (id != CMD_ID_STOP && id != cmd_active) report(id);
    }
    adjust(mmio_read(device, CONFIG_NUM_PAGES));
}

/* Called from vCPU 0's loop: polls at most once per timer tick. */
void balloon_tick(u64 ticks) {
    if (ticks == last_ticks) return;
    last_ticks = ticks;
    balloon_poll();
}
