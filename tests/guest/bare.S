/*
 * A bare test guest: a minimal bzImage (Linux boot protocol 2.12, 64-bit entry) that is not Linux,
 * for checks that need ring 0 and no guest kernel in the way. Built by scripts/guest-fixtures:
 *   gcc -c bare.S -o bare.o && objcopy -O binary -j .text bare.o bare.bzImage
 *
 * The first character of the command line picks the role; both write to COM1 and end by halting
 * with interrupts off (which ends the VM):
 *
 *   P  painter: fills XMM0-XMM15 with 0xa5 bytes, says "EMBER-BARE: painted", then checks for
 *      about 20 s of TSC time that XMM0 keeps its value ("EMBER-BARE: painter kept its registers",
 *      or "EMBER-BARE: painter lost its registers").
 *   R  reader: never writes an XMM register and checks for about 12 s of TSC time whether XMM0
 *      holds the painter's bytes: "EMBER-BARE: LEAK another VM's XMM0" or "EMBER-BARE: clean".
 *      Run next to a painter on the same physical CPU, it catches a hypervisor that restores a
 *      vCPU's FPU/SSE state only under the guest's XCR0 (x87 only after reset), leaving the
 *      previous vCPU's SSE registers in place.
 */
    .intel_syntax noprefix
    .text
    .code64
start:
    .org 0x1f1
    .byte 1                     /* setup_sects: the setup part is 2 sectors (1024 bytes) */
    .org 0x1fe
    .word 0xaa55                /* boot_flag */
    .byte 0xeb, 0x66            /* jump over the header: the header ends at 0x268 */
    .ascii "HdrS"
    .word 0x020c                /* boot protocol 2.12 */
    .org 0x211
    .byte 1                     /* loadflags: LOADED_HIGH */
    .org 0x214
    .long 0x100000              /* code32_start */
    .org 0x22c
    .long 0x7fffffff            /* initrd_addr_max */
    .org 0x236
    .word 1                     /* xloadflags: XLF_KERNEL_64 */
    .long 255                   /* cmdline_size */
    .org 0x260
    .long 0x10000               /* init_size */
    .org 0x400                  /* the protected-mode part, loaded at 0x100000 */
    .org 0x600                  /* its 64-bit entry: code32_start + 0x200 */
entry:
    cld
    mov rsp, 0x80000
    mov eax, dword ptr [rsi + 0x228]    /* cmd_line_ptr in the zero page */
    movzx ebx, byte ptr [rax]
    mov rax, cr0                        /* SSE on: CR0.EM clear, CR0.MP set */
    and rax, ~4
    or rax, 2
    mov cr0, rax
    mov rax, cr4                        /* CR4.OSFXSR | CR4.OSXMMEXCPT; XCR0 stays x87 only */
    or rax, 0x600
    mov cr4, rax
    cmp bl, 'P'
    je painter

reader:
    lea rsi, [rip + msg_reader]
    call puts
    call now
    mov r12, rax
1:  movq rax, xmm0
    movabs rcx, 0xa5a5a5a5a5a5a5a5
    cmp rax, rcx
    je leak
    call now
    sub rax, r12
    movabs rcx, 30000000000
    cmp rax, rcx
    jb 1b
    lea rsi, [rip + msg_clean]
    call puts
    jmp stop
leak:
    lea rsi, [rip + msg_leak]
    call puts
    jmp stop

painter:
    movabs rax, 0xa5a5a5a5a5a5a5a5
    movq xmm0, rax
    punpcklqdq xmm0, xmm0
    movdqa xmm1, xmm0
    movdqa xmm2, xmm0
    movdqa xmm3, xmm0
    movdqa xmm4, xmm0
    movdqa xmm5, xmm0
    movdqa xmm6, xmm0
    movdqa xmm7, xmm0
    movdqa xmm8, xmm0
    movdqa xmm9, xmm0
    movdqa xmm10, xmm0
    movdqa xmm11, xmm0
    movdqa xmm12, xmm0
    movdqa xmm13, xmm0
    movdqa xmm14, xmm0
    movdqa xmm15, xmm0
    lea rsi, [rip + msg_painted]
    call puts
    call now
    mov r12, rax
2:  movq rax, xmm0
    movabs rcx, 0xa5a5a5a5a5a5a5a5
    cmp rax, rcx
    jne lost
    call now
    sub rax, r12
    movabs rcx, 50000000000
    cmp rax, rcx
    jb 2b
    lea rsi, [rip + msg_kept]
    call puts
    jmp stop
lost:
    lea rsi, [rip + msg_lost]
    call puts

stop:
    cli
    hlt
    jmp stop

/* rax = TSC */
now:
    rdtsc
    shl rdx, 32
    or rax, rdx
    ret

/* Writes the NUL-terminated string at rsi to COM1. */
puts:
    mov dx, 0x3f8
3:  lodsb
    test al, al
    jz 4f
    out dx, al
    jmp 3b
4:  ret

msg_reader:  .asciz "EMBER-BARE: reader started\n"
msg_clean:   .asciz "EMBER-BARE: clean\n"
msg_leak:    .asciz "EMBER-BARE: LEAK another VM's XMM0\n"
msg_painted: .asciz "EMBER-BARE: painted\n"
msg_kept:    .asciz "EMBER-BARE: painter kept its registers\n"
msg_lost:    .asciz "EMBER-BARE: painter lost its registers\n"
    .balign 512
