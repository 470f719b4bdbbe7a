// Runtime dispatch of hot CPU loops to the best x86 instruction set: each function marked
// PATRONUS_CLONES is compiled for AVX-512, AVX2 and baseline x86-64, chosen at load time.
// Loop bodies must be written inside the marked function (or a macro): an inline helper compiled
// for the baseline would not be inlined into the clones.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define PATRONUS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PATRONUS_CLONES
#endif
