/*
 * A tiny PVH test kernel (ELF32): prints on COM1 what the VMM handed it in
 * hvm_start_info, then halts.  Tests compare the lines with what they passed:
 *
 *   PVH magic=336ec578 version=00000001
 *   cmdline=<the command line>
 *   memmap entries=<n>
 *   memmap <addr> <size> <type>            (one line per entry, 16 hex digits)
 *   modules=<n>
 *   module0 <addr> <size> head=<first 8 bytes as text>
 *   done
 *
 * Entered in 32-bit protected mode, paging off, %ebx = hvm_start_info.  All
 * code is ring 0, which PVM emulates: output uses `rep outsb` (one emulated
 * instruction per string).
 */
#define COM1 0x3f8

        .section .note.Xen, "a", @note
        .balign 4
        .long 4, 4, 18                  /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .long start

/* puts: write a NUL-terminated string whose address is the argument. */
        .macro puts label
        movl    \label, %esi
        call    put_cstring
        .endm

        .text
        .code32
        .globl start
start:
        cli
        cld
        movl    $stack_top, %esp
        movl    %ebx, %ebp              /* %ebp: hvm_start_info for the rest */

        puts    $s_magic
        movl    0(%ebp), %eax
        call    put_hex32
        puts    $s_version
        movl    4(%ebp), %eax
        call    put_hex32
        call    newline

        puts    $s_cmdline
        movl    24(%ebp), %esi          /* cmdline_paddr (low 32 bits) */
        testl   %esi, %esi
        jz      1f
        call    put_cstring
1:      call    newline

        puts    $s_memmap_entries
        movl    48(%ebp), %eax
        call    put_dec
        call    newline
        movl    40(%ebp), %edi          /* memmap_paddr */
        movl    48(%ebp), %ecx
2:      testl   %ecx, %ecx
        jz      3f
        pushl   %ecx
        puts    $s_memmap
        call    put_address_size
        call    space
        movl    16(%edi), %eax
        call    put_dec
        call    newline
        addl    $24, %edi
        popl    %ecx
        decl    %ecx
        jmp     2b
3:
        puts    $s_modules
        movl    12(%ebp), %eax          /* nr_modules */
        call    put_dec
        call    newline
        cmpl    $0, 12(%ebp)
        je      4f
        movl    16(%ebp), %edi          /* modlist_paddr */
        puts    $s_module0
        call    put_address_size
        puts    $s_head
        movl    0(%edi), %esi
        movl    $8, %ecx
        cmpl    8(%edi), %ecx
        jbe     5f
        movl    8(%edi), %ecx
5:      movl    $COM1, %edx
        rep outsb
        call    newline
4:
        puts    $s_done
halt:
        hlt
        jmp     halt

/* put_cstring: %esi = string; clobbers %eax %ecx %edx %esi. */
put_cstring:
        movl    %esi, %ecx
1:      cmpb    $0, (%ecx)
        je      2f
        incl    %ecx
        jmp     1b
2:      subl    %esi, %ecx
        movl    $COM1, %edx
        rep outsb
        ret

/* put_address_size: the two u64 at %edi (address, size) as hex, space between. */
put_address_size:
        movl    0(%edi), %eax
        movl    4(%edi), %edx
        call    put_hex64
        call    space
        movl    8(%edi), %eax
        movl    12(%edi), %edx
        jmp     put_hex64

/* put_hex64: %edx:%eax as 16 hex digits. */
put_hex64:
        pushl   %eax
        movl    %edx, %eax
        call    put_hex32
        popl    %eax
        /* fall through */
/* put_hex32: %eax as 8 hex digits. */
put_hex32:
        pushl   %edi
        movl    $buffer + 8, %edi
        movl    $8, %ecx
1:      movl    %eax, %edx
        andl    $0xf, %edx
        movb    hex_digits(%edx), %dl
        decl    %edi
        movb    %dl, (%edi)
        shrl    $4, %eax
        loop    1b
        movl    %edi, %esi
        movl    $8, %ecx
        movl    $COM1, %edx
        rep outsb
        popl    %edi
        ret

/* put_dec: %eax in decimal. */
put_dec:
        pushl   %edi
        movl    $buffer + 16, %edi
        movl    $10, %ecx
1:      xorl    %edx, %edx
        divl    %ecx
        addb    $'0', %dl
        decl    %edi
        movb    %dl, (%edi)
        testl   %eax, %eax
        jnz     1b
        movl    %edi, %esi
        movl    $buffer + 16, %ecx
        subl    %edi, %ecx
        movl    $COM1, %edx
        rep outsb
        popl    %edi
        ret

newline:
        movb    $'\n', %al
        jmp     putc
space:
        movb    $' ', %al
putc:
        movl    $COM1, %edx
        outb    %al, %dx
        ret

        .section .rodata
hex_digits:       .ascii "0123456789abcdef"
s_magic:          .asciz "PVH magic="
s_version:        .asciz " version="
s_cmdline:        .asciz "cmdline="
s_memmap_entries: .asciz "memmap entries="
s_memmap:         .asciz "memmap "
s_modules:        .asciz "modules="
s_module0:        .asciz "module0 "
s_head:           .asciz " head="
s_done:           .asciz "done\n"

        .bss
        .balign 16
buffer:           .skip 16
stack:            .skip 4096
stack_top:
