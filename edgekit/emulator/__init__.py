"""An emulated arm64 board on the workstation: the real ARM kernels under qemu-user.

`make emulator` (`edgekit emulator build`) builds, once, and caches under the
user cache dir:

- an arm64 Debian rootfs (debootstrap + qemu-user-static, entered with chroot
  in a private mount namespace) holding the aarch64 runtimes without torch:
  onnxruntime in a venv at /opt/edgekit/venv, and OpenSSH's sshd;
- `edgekit-et-runner`, a native ExecuTorch runner cross-compiled with
  g++-aarch64-linux-gnu against the executorch aarch64 wheel's headers and
  shared libraries (the same binary `edgekit deploy` ships to Linux ARM boards);
- `insn_count.so`, a qemu TCG plugin that counts executed guest instructions.

Then `edgekit validate BUILD --emulate` runs the artifact on the emulated core
of the build's target (QEMU_CPU plus a matching /proc/cpuinfo) and compares its
outputs with the host's, and `edgekit emulator board` starts the rootfs's own
sshd on 127.0.0.1 so that `make deploy` reaches an ARM "device" end to end.

Wall time under emulation says nothing about a board: it is never shown as
latency. Instruction counts are deterministic and are shown as relative cost.
"""
