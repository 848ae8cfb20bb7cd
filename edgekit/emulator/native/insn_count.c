/*
 * insn_count: a qemu TCG plugin counting the guest instructions executed
 * between two marker syscalls (edgekit-et-runner --count, or
 * edgekit.emulator.count's marker for the Python runner).
 *
 *   qemu-aarch64 -cpu cortex-a72 -plugin ./insn_count.so,out=/tmp/n.txt ...
 *
 * Writes the count (decimal) to `out` when the stop marker is seen. Instruction
 * counts under emulation are deterministic, unlike wall time, so they can
 * compare two artifacts on one emulated core (int8 vs fp32, pruned vs not).
 *
 * Debian ships qemu-user's plugin loader but not its header, so the handful
 * of declarations used here are written out below; they follow the QEMU 7.2
 * plugin API (qemu-plugin.h, API version 1).
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };

typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                                              uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4,
                                              uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);

#define EXPORT __attribute__((visibility("default")))
EXPORT int qemu_plugin_version = 1;

/* Keep in sync with kMarkSyscall in et_runner.cpp and MARK_SYSCALL in count.py. */
#define MARK_SYSCALL 0x4ed6
#define MARK_START 1
#define MARK_STOP 2

static uint64_t executed;  /* guest instructions since the start marker, all threads */
static bool counting;
static char out_path[4096];

/* Called once per executed translation block with that block's instruction
 * count. An atomic add keeps the total exact when the runtime runs threads. */
static void tb_exec(unsigned int vcpu_index, void *n_insns)
{
    if (__atomic_load_n(&counting, __ATOMIC_RELAXED)) {
        __atomic_fetch_add(&executed, (uint64_t)(uintptr_t)n_insns, __ATOMIC_RELAXED);
    }
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS,
                                         (void *)(uintptr_t)qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num != MARK_SYSCALL) {
        return;
    }
    if (a1 == MARK_START) {
        __atomic_store_n(&executed, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&counting, true, __ATOMIC_RELAXED);
    } else if (a1 == MARK_STOP) {
        __atomic_store_n(&counting, false, __ATOMIC_RELAXED);
        FILE *f = fopen(out_path, "w");
        if (f) {
            fprintf(f, "%" PRIu64 "\n", __atomic_load_n(&executed, __ATOMIC_RELAXED));
            fclose(f);
        }
    }
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
        }
    }
    if (!out_path[0]) {
        fprintf(stderr, "insn_count: give out=FILE\n");
        return 1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}
