// CUDA kernel patronus::scheduler_step_fwd (the kernel body is in kernel.cuh, beside it).
// One launch on the current stream, no host synchronisation, no allocation beyond the outputs.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "checks.h"
#include "kernel.cuh"

namespace patronus {
namespace {

bool aligned(const void* pointer, size_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

std::tuple<at::Tensor, at::Tensor> scheduler_step_cuda(
    const at::Tensor& sample, const at::Tensor& model_output, const at::Tensor& timestep,
    const at::Tensor& prev_timestep, const at::Tensor& alphas_cumprod, int64_t mode,
    int64_t prediction, int64_t variance, double eta, double clip, bool recompute_eps,
    const c10::optional<at::Tensor>& threshold, const c10::optional<at::Tensor>& noise,
    const c10::optional<at::Tensor>& rng_state, const c10::optional<at::Tensor>& null_output,
    double guidance_scale, at::TensorList history, at::TensorList history_timestep) {
  const step::Options options =
      check_scheduler_step(sample, model_output, timestep, prev_timestep, alphas_cumprod, mode,
                           prediction, variance, eta, clip, recompute_eps, threshold, noise,
                           rng_state, null_output, guidance_scale, history, history_timestep);
  const c10::cuda::CUDAGuard guard(sample.device());
  const at::Tensor x = sample.contiguous();
  const at::Tensor out = model_output.contiguous();
  at::Tensor prev = at::empty_like(x);
  at::Tensor x0 = at::empty_like(x);
  const int64_t numel = x.numel();
  if (numel == 0) return {prev, x0};
  const at::Tensor table = alphas_cumprod.contiguous();
  const at::Tensor t_now = timestep.contiguous(), t_next = prev_timestep.contiguous();
  const at::Tensor limits = threshold.has_value() ? threshold->to(at::kDouble).contiguous()
                                                  : at::Tensor();
  const at::Tensor z = noise.has_value() ? noise->contiguous() : at::Tensor();
  const at::Tensor unconditioned =
      null_output.has_value() ? null_output->contiguous() : at::Tensor();
  const int history_count = static_cast<int>(history.size());
  at::Tensor previous[2], previous_levels[2];
  for (int i = 0; i < history_count; ++i) {
    previous[i] = history[i].contiguous();
    previous_levels[i] = history_timestep[i].contiguous();
  }
  const at::Tensor rng = !noise.has_value() && rng_state.has_value() ? rng_state->contiguous()
                                                                     : at::Tensor();

  step::KernelArgs args{};
  args.timestep = t_now.const_data_ptr<int64_t>();
  args.prev_timestep = t_next.const_data_ptr<int64_t>();
  args.alphas_cumprod = table.const_data_ptr<double>();
  args.steps = table.size(0);
  args.threshold = limits.defined() ? limits.const_data_ptr<double>() : nullptr;
  args.rng_state = rng.defined() ? rng.const_data_ptr<int64_t>() : nullptr;
  args.numel = numel;
  args.per_sample = numel / x.size(0);
  args.options = options;
  args.guidance_scale = guidance_scale;
  args.history = history_count;
  for (int i = 0; i < history_count; ++i) {
    args.history_timestep[i] = previous_levels[i].const_data_ptr<int64_t>();
  }

  const int threads = 256;
  const int64_t groups = (numel + 3) / 4;
  int multiprocessors = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount,
                                        sample.device().index()));
  const int64_t max_blocks = static_cast<int64_t>(multiprocessors) * 16;
  const int blocks = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>((groups + threads - 1) / threads, max_blocks)));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scheduler_step", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* z_ptr = z.defined() ? z.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* null_ptr =
        unconditioned.defined() ? unconditioned.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* m1_ptr = history_count > 0 ? previous[0].const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* m2_ptr = history_count > 1 ? previous[1].const_data_ptr<scalar_t>() : nullptr;
    const size_t vector_bytes = sizeof(scalar_t) * 4;
    const bool vectorized = numel % 4 == 0 && aligned(x.const_data_ptr(), vector_bytes) &&
                            aligned(out.const_data_ptr(), vector_bytes) &&
                            aligned(prev.const_data_ptr(), vector_bytes) &&
                            aligned(x0.const_data_ptr(), vector_bytes) &&
                            (z_ptr == nullptr || aligned(z_ptr, vector_bytes)) &&
                            (null_ptr == nullptr || aligned(null_ptr, vector_bytes)) &&
                            (m1_ptr == nullptr || aligned(m1_ptr, vector_bytes)) &&
                            (m2_ptr == nullptr || aligned(m2_ptr, vector_bytes));
    if (vectorized) {
      step::scheduler_step_kernel<scalar_t, opmath_t, true><<<blocks, threads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), null_ptr, z_ptr, m1_ptr,
          m2_ptr, prev.mutable_data_ptr<scalar_t>(), x0.mutable_data_ptr<scalar_t>(), args);
    } else {
      step::scheduler_step_kernel<scalar_t, opmath_t, false><<<blocks, threads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), null_ptr, z_ptr, m1_ptr,
          m2_ptr, prev.mutable_data_ptr<scalar_t>(), x0.mutable_data_ptr<scalar_t>(), args);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {prev, x0};
}

}  // namespace

TORCH_LIBRARY_IMPL(patronus, CUDA, m) { m.impl("scheduler_step_fwd", &scheduler_step_cuda); }

}  // namespace patronus
