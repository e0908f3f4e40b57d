/*
 * The embedded guest's page allocator: free memory in 4 MiB blocks, aligned,
 * kept first in, first out (a block freed now is the last one handed out
 * again, so a churning workload walks all free memory).  Free memory is what
 * the free-page-hint driver reports, and what the balloon inflates with.
 *
 * Only vCPU 0 calls it, so it takes no lock.  When the free list is empty, a
 * block the balloon driver reported as a free-page hint is taken back, as
 * Linux's balloon shrinker gives hinted pages back under memory pressure.
 */
#include "guest.h"

static u64 blocks[MAX_BLOCKS];
static u64 head, count;

void alloc_add_range(u64 start, u64 end) {
    u64 first = (start + BLOCK_SIZE - 1) & ~(BLOCK_SIZE - 1);
    for (u64 b = first; b + BLOCK_SIZE <= end; b += BLOCK_SIZE) free_block(b);
}

void free_block(u64 base) {
    if (count == MAX_BLOCKS) return;
    blocks[(head + count) % MAX_BLOCKS] = base;
    count++;
}

int alloc_free_block(u64 *base) {
    if (!count) return 0;
    *base = blocks[head];
    head = (head + 1) % MAX_BLOCKS;
    count--;
    return 1;
}

int alloc_block(u64 *base) {
    return alloc_free_block(base) || balloon_take_hinted(base);
}

u64 alloc_free_blocks(void) { return count; }
