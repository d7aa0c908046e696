/* Bare-metal start-up for the emulated Cortex-M boards firmware_export builds for (QEMU's mps2/mps3).
 * Part of tinysense's build, not of the exported sources: a real board brings its own (the Arduino
 * core, the vendor SDK). Reset enables the FPU, copies .data from flash, clears .bss, paints the
 * stack, opens semihosting stdio, runs constructors and main(), and reports the stack and heap the
 * run used before it exits through semihosting with main's return value. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

extern uint32_t __data_load, __data_start, __data_end, __bss_start__, __bss_end__;
extern uint32_t __StackLimit, __StackTop, end;
extern int main(void);
extern void __libc_init_array(void);
extern void initialise_monitor_handles(void);

#define STACK_PAINT 0xA5A5A5A5u

/* -nostartfiles leaves out crti/crtn; __libc_init_array calls these around the constructors. */
void _init(void) {}
void _fini(void) {}

static void report_memory(void) {
  const uint32_t* p = &__StackLimit;
  while (p < &__StackTop && *p == STACK_PAINT) ++p;
  void* heap_now = sbrk(0);
  printf("tinysense-startup: stack %lu B, heap %lu B\n",
         (unsigned long)((uintptr_t)&__StackTop - (uintptr_t)p),
         (unsigned long)((uintptr_t)heap_now - (uintptr_t)&end));
}

void Reset_Handler(void) {
#if defined(__ARM_FP)
  *(volatile uint32_t*)0xE000ED88u |= 0xFu << 20; /* CPACR: CP10 and CP11 full access */
  __asm volatile("dsb\n isb");
#endif
  for (uint32_t *src = &__data_load, *dst = &__data_start; dst < &__data_end;) *dst++ = *src++;
  for (uint32_t* dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
  uint32_t* sp;
  __asm volatile("mov %0, sp" : "=r"(sp));
  for (uint32_t* p = &__StackLimit; p < sp - 16; ++p) *p = STACK_PAINT;
  initialise_monitor_handles();
  __libc_init_array();
  int rc = main();
  report_memory();
  exit(rc);
}

static void Fault_Handler(void) {
  static const char text[] = "tinysense-startup: fault (HardFault, MemManage, BusFault or UsageFault)\n";
  write(2, text, sizeof(text) - 1);
  _exit(90);
}

static void Default_Handler(void) {
  static const char text[] = "tinysense-startup: unexpected interrupt\n";
  write(2, text, sizeof(text) - 1);
  _exit(91);
}

__attribute__((section(".vectors"), used)) void (*const g_vectors[16])(void) = {
    (void (*)(void))&__StackTop, Reset_Handler, Default_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, 0, 0, 0, 0, Default_Handler, Default_Handler, 0, Default_Handler,
    Default_Handler,
};
