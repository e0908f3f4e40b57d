"""How this repository starts QEMU 10 on the embedded guest: one command line,
shared by the tests and bench/side_by_side.py."""

QBOOT = "/usr/share/qemu/qboot.rom"

# Plain `-cpu host` makes QEMU 10 abort on AMD EPYC hosts with "failed to set
# MSR 0x10a" (IA32_ARCH_CAPABILITIES, an Intel-defined MSR).  Without that one
# feature the same model starts on Intel and AMD hosts alike.
QEMU_CPU = "host,-arch-capabilities"


def microvm_command(qemu, image, memory, cpus, cmdline):
    """A microvm with the guest as its PVH kernel, serial on stdout."""
    return [qemu, "-M", "microvm", "-accel", "kvm", "-cpu", QEMU_CPU, "-m", memory, "-smp", str(cpus),
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-bios", QBOOT, "-kernel", str(image), "-append", cmdline]
