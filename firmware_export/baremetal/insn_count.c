/* A QEMU TCG plugin, part of tinysense's build: counts the guest instructions executed between
 * calls of two marker functions (begin=ADDR,end=ADDR), and prints the total and the number of
 * begin/end pairs at exit. It counts instructions, not cycles.
 *
 * Only the few entry points used are declared here, from QEMU's documented plugin API (version 1,
 * QEMU 7.x); QEMU resolves them when it loads the plugin. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                           void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb*));
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb* tb, void (*cb)(unsigned int, void*),
                                          enum qemu_plugin_cb_flags flags, void* userdata);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb* tb, enum qemu_plugin_op op, void* ptr,
                                              uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void*), void* userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb* tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb* tb);
void qemu_plugin_outs(const char* string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t g_begin, g_end;
static uint64_t g_executed;  /* every instruction, added inline per translated block */
static uint64_t g_started, g_counted, g_pairs;
static int g_open;

static void on_begin(unsigned int vcpu, void* data) {
  (void)vcpu, (void)data;
  g_started = g_executed;
  g_open = 1;
}

static void on_end(unsigned int vcpu, void* data) {
  (void)vcpu, (void)data;
  if (g_open) {
    g_counted += g_executed - g_started;
    ++g_pairs;
    g_open = 0;
  }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb* tb) {
  (void)id;
  uint64_t pc = qemu_plugin_tb_vaddr(tb);
  if (pc == g_begin) qemu_plugin_register_vcpu_tb_exec_cb(tb, on_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
  if (pc == g_end) qemu_plugin_register_vcpu_tb_exec_cb(tb, on_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &g_executed,
                                           qemu_plugin_tb_n_insns(tb));
}

static void on_plugin_exit(qemu_plugin_id_t id, void* data) {
  (void)id, (void)data;
  char line[160];
  snprintf(line, sizeof(line), "insn-count: %" PRIu64 " between %" PRIu64 " mark pairs, %" PRIu64 " in all\n",
           g_counted, g_pairs, g_executed);
  qemu_plugin_outs(line);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t* info,
                                                               int argc, char** argv) {
  (void)info;
  for (int i = 0; i < argc; ++i) {
    if (strncmp(argv[i], "begin=", 6) == 0) g_begin = strtoull(argv[i] + 6, NULL, 0);
    if (strncmp(argv[i], "end=", 4) == 0) g_end = strtoull(argv[i] + 4, NULL, 0);
  }
  if (!g_begin || !g_end) {
    fprintf(stderr, "insn_count: give begin=ADDR,end=ADDR\n");
    return -1;
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
  return 0;
}
