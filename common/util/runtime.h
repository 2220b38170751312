// Process set-up for speed on CPUs: allocator thresholds, intra-op threads, a BLAS sanity probe.
#pragma once
#include <string>

namespace tiller {

// libgomp spins in its barriers by default; when another process shares the cores, LibTorch's
// and OpenBLAS's threads spin against each other and a training step became 100x slower here.
// OMP_WAIT_POLICY is read once when libgomp loads, so when it is unset this re-executes the
// program with OMP_WAIT_POLICY=passive (threads sleep when idle). A value the user set is kept.
void ensure_passive_omp_wait(char** argv);

// Raises glibc's mmap and trim thresholds so freed activations are reused rather than returned to
// the OS and faulted back in every step (1.5x on a training step here). Call first in main.
void tune_allocator();

// Sets LibTorch's intra-op threads; threads <= 0 means every core.
void set_threads(int threads);

// This machine's physical memory in bytes.
double physical_memory_bytes();

// Throws tiller::Error ("<what> needs 12.0 GiB; this machine has 7.8 GiB of memory") when an
// allocation about to be made is larger than the physical memory: a config read from a small file
// must not make the process try to allocate an unbounded amount. Bytes in double (no overflow).
void check_fits_in_memory(double bytes, const std::string& what);

// Times a 1024x1024 fp32 matmul; warns on stderr when the BLAS is the slow reference one.
void warn_if_slow_blas();

}  // namespace tiller
