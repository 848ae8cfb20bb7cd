"""The /proc/cpuinfo an emulated core shows, per qemu -cpu model.

qemu-user passes the host's x86 /proc/cpuinfo through to the guest: onnxruntime
then crashes on import, and XNNPACK (which picks its micro-kernels from the CPU
part it reads there) would guess. So every emulated run gets QEMU_CPU and this
text bind-mounted over /proc/cpuinfo, both from the target profile's qemu_cpu.
Part numbers and feature flags: Arm's Technical Reference Manuals for each
core; the layout is what an arm64 Linux kernel prints.
"""

from __future__ import annotations

# qemu cpu -> (MIDR part number, variant, revision, hwcaps the kernel lists for that core)
CORES = {
    "cortex-a53": ("0xd03", "0x0", "4", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a57": ("0xd07", "0x1", "1", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a72": ("0xd08", "0x0", "3", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a76": ("0xd0b", "0x4", "1", "fp asimd evtstrm crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"),
}


def cpuinfo_text(qemu_cpu: str, cores: int) -> str:
    if qemu_cpu not in CORES:
        raise ValueError(f"no /proc/cpuinfo text for qemu cpu '{qemu_cpu}'; known: {', '.join(CORES)}")
    part, variant, revision, features = CORES[qemu_cpu]
    blocks = [
        f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n"
        for i in range(cores)
    ]
    return "\n".join(blocks) + "\n"
