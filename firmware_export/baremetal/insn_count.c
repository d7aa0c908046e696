/* A QEMU TCG plugin, part of tinysense's build: counts the guest instructions executed between
 * calls of two marker functions (begin=ADDR,end=ADDR) and prints each pair's count at exit. With
 * op_begin=ADDR,op_end=ADDR it also counts each operator between those markers inside a pair, and
 * with ranges=FILE (lines "LOW HIGH", hex, sorted: CMSIS-NN's functions) how many of an operator's
 * instructions ran inside those ranges. It counts instructions, not cycles.
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

#define MAX_PAIRS 8
#define MAX_OPS 4096
#define MAX_RANGES 8192

static uint64_t g_begin, g_end, g_op_begin, g_op_end;
static uint64_t g_executed;  /* every instruction, added inline per translated block */
static uint64_t g_in_ranges;  /* those in blocks that start inside a range */
static uint64_t g_started, g_pair[MAX_PAIRS];
static uint64_t g_pairs, g_more_pairs;
static int g_open, g_op_open;
static uint64_t g_op_started, g_op_started_in;
static uint64_t g_op_count[MAX_OPS], g_op_in[MAX_OPS];
static unsigned g_op_pair[MAX_OPS];
static size_t g_ops, g_more_ops;
static uint64_t g_range_lo[MAX_RANGES], g_range_hi[MAX_RANGES];
static size_t g_ranges;

static void on_begin(unsigned int vcpu, void* data) {
  (void)vcpu, (void)data;
  g_started = g_executed;
  g_open = 1;
}

static void on_end(unsigned int vcpu, void* data) {
  (void)vcpu, (void)data;
  if (!g_open) return;
  if (g_pairs < MAX_PAIRS) g_pair[g_pairs] = g_executed - g_started; else ++g_more_pairs;
  ++g_pairs;
  g_open = 0;
}

static void on_op_begin(unsigned int vcpu, void* data) {
  (void)vcpu, (void)data;
  if (!g_open) return;
  g_op_started = g_executed;
  g_op_started_in = g_in_ranges;
  g_op_open = 1;
}

static void on_op_end(unsigned int vcpu, void* data) {
  (void)vcpu, (void)data;
  if (!g_open || !g_op_open) return;
  if (g_ops < MAX_OPS) {
    g_op_count[g_ops] = g_executed - g_op_started;
    g_op_in[g_ops] = g_in_ranges - g_op_started_in;
    g_op_pair[g_ops] = (unsigned)g_pairs;
    ++g_ops;
  } else {
    ++g_more_ops;
  }
  g_op_open = 0;
}

static int in_ranges(uint64_t pc) {
  size_t lo = 0, hi = g_ranges;
  while (lo < hi) {  /* the last range starting at or below pc */
    size_t mid = (lo + hi) / 2;
    if (g_range_lo[mid] <= pc) lo = mid + 1; else hi = mid;
  }
  return lo > 0 && pc < g_range_hi[lo - 1];
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb* tb) {
  (void)id;
  uint64_t pc = qemu_plugin_tb_vaddr(tb);
  size_t n = qemu_plugin_tb_n_insns(tb);
  /* the markers' callbacks first, so an operator's count starts after its marker's own block */
  if (pc == g_begin) qemu_plugin_register_vcpu_tb_exec_cb(tb, on_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
  if (pc == g_end) qemu_plugin_register_vcpu_tb_exec_cb(tb, on_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
  if (g_op_begin && pc == g_op_begin) qemu_plugin_register_vcpu_tb_exec_cb(tb, on_op_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
  if (g_op_end && pc == g_op_end) qemu_plugin_register_vcpu_tb_exec_cb(tb, on_op_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &g_executed, n);
  if (g_ranges && in_ranges(pc)) qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &g_in_ranges, n);
}

static void on_plugin_exit(qemu_plugin_id_t id, void* data) {
  (void)id, (void)data;
  char line[160];
  for (uint64_t i = 0; i < g_pairs && i < MAX_PAIRS; ++i) {
    snprintf(line, sizeof(line), "insn-pair: %" PRIu64 " %" PRIu64 "\n", i, g_pair[i]);
    qemu_plugin_outs(line);
  }
  for (size_t i = 0; i < g_ops; ++i) {
    snprintf(line, sizeof(line), "insn-op: %u %" PRIu64 " %" PRIu64 "\n", g_op_pair[i], g_op_count[i], g_op_in[i]);
    qemu_plugin_outs(line);
  }
  snprintf(line, sizeof(line), "insn-count: %" PRIu64 " mark pairs (%" PRIu64 " not kept), %zu operators (%zu not "
           "kept), %" PRIu64 " in all\n", g_pairs, g_more_pairs, g_ops, g_more_ops, g_executed);
  qemu_plugin_outs(line);
}

static int read_ranges(const char* path) {
  FILE* f = fopen(path, "r");
  if (!f) return -1;
  unsigned long long lo, hi;
  while (g_ranges < MAX_RANGES && fscanf(f, "%llx %llx", &lo, &hi) == 2) {
    g_range_lo[g_ranges] = lo;
    g_range_hi[g_ranges] = hi;
    ++g_ranges;
  }
  fclose(f);
  return 0;
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t* info,
                                                               int argc, char** argv) {
  (void)info;
  for (int i = 0; i < argc; ++i) {
    if (strncmp(argv[i], "begin=", 6) == 0) g_begin = strtoull(argv[i] + 6, NULL, 0);
    if (strncmp(argv[i], "end=", 4) == 0) g_end = strtoull(argv[i] + 4, NULL, 0);
    if (strncmp(argv[i], "op_begin=", 9) == 0) g_op_begin = strtoull(argv[i] + 9, NULL, 0);
    if (strncmp(argv[i], "op_end=", 7) == 0) g_op_end = strtoull(argv[i] + 7, NULL, 0);
    if (strncmp(argv[i], "ranges=", 7) == 0 && read_ranges(argv[i] + 7) != 0) {
      fprintf(stderr, "insn_count: cannot read %s\n", argv[i] + 7);
      return -1;
    }
  }
  if (!g_begin || !g_end) {
    fprintf(stderr, "insn_count: give begin=ADDR,end=ADDR\n");
    return -1;
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
  return 0;
}
