// Compile check of the torch-free CUDA kernel: `nvcc -c csrc/tests/nvcc_check.cu` on any machine
// (no GPU, no torch). Instantiates every variant the launcher uses.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../scheduler_step/kernel.cuh"

namespace patronus {
namespace step {

template __global__ void scheduler_step_kernel<float, float, true>(
    const float*, const float*, const float*, const float*, const float*, const float*, float*,
    float*, KernelArgs);
template __global__ void scheduler_step_kernel<float, float, false>(
    const float*, const float*, const float*, const float*, const float*, const float*, float*,
    float*, KernelArgs);
template __global__ void scheduler_step_kernel<double, double, false>(
    const double*, const double*, const double*, const double*, const double*, const double*,
    double*, double*, KernelArgs);
template __global__ void scheduler_step_kernel<__half, float, true>(
    const __half*, const __half*, const __half*, const __half*, const __half*, const __half*,
    __half*, __half*, KernelArgs);
template __global__ void scheduler_step_kernel<__nv_bfloat16, float, true>(
    const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*,
    const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*, __nv_bfloat16*, KernelArgs);

}  // namespace step
}  // namespace patronus
