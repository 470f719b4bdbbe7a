// CPU kernel of patronus::scheduler_step: one parallel pass over the elements, in groups of four
// (one Philox call each), float32 opmath for half types.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../scheduler_step_checks.h"

namespace patronus {
namespace {

std::tuple<at::Tensor, at::Tensor> scheduler_step_cpu(
    const at::Tensor& sample, const at::Tensor& model_output, const at::Tensor& timestep,
    const at::Tensor& prev_timestep, const at::Tensor& alphas_cumprod, int64_t mode,
    int64_t prediction, int64_t variance, double eta, double clip, bool recompute_eps,
    const c10::optional<at::Tensor>& threshold, const c10::optional<at::Tensor>& noise,
    const c10::optional<at::Tensor>& rng_state) {
  const step::Options options =
      check_scheduler_step(sample, model_output, timestep, prev_timestep, alphas_cumprod, mode,
                           prediction, variance, eta, clip, recompute_eps, threshold, noise,
                           rng_state);
  const at::Tensor x = sample.contiguous();
  const at::Tensor out = model_output.contiguous();
  at::Tensor prev = at::empty_like(x);
  at::Tensor x0 = at::empty_like(x);
  const int64_t numel = x.numel();
  if (numel == 0) return {prev, x0};
  const int64_t batch = x.size(0), per_sample = numel / batch;

  const at::Tensor table = alphas_cumprod.contiguous();
  const double* abar = table.const_data_ptr<double>();
  const int64_t steps = table.size(0);
  const at::Tensor t_now = timestep.contiguous(), t_next = prev_timestep.contiguous();
  std::vector<step::Coefficients> coefficients(batch);
  std::vector<double> thresholds(batch, clip);
  const at::Tensor threshold_d =
      threshold.has_value() ? threshold->to(at::kDouble).contiguous() : at::Tensor();
  bool needs_noise = false;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t c = t_now.const_data_ptr<int64_t>()[b], p = t_next.const_data_ptr<int64_t>()[b];
    TORCH_CHECK(c >= -1 && c < steps && p >= -1 && p < steps,
                "scheduler_step: timesteps must lie in [-1, ", steps, ")");
    coefficients[b] = step::coefficients(c < 0 ? 1.0 : abar[c], p < 0 ? 1.0 : abar[p], options);
    needs_noise = needs_noise || coefficients[b].sigma > 0.0;
    if (threshold.has_value()) thresholds[b] = threshold_d.const_data_ptr<double>()[b];
  }
  const bool generate = needs_noise && !noise.has_value();
  const uint64_t seed = generate ? static_cast<uint64_t>(rng_state->const_data_ptr<int64_t>()[0]) : 0;
  const uint64_t offset =
      generate ? static_cast<uint64_t>(rng_state->const_data_ptr<int64_t>()[1]) : 0;
  const at::Tensor z = noise.has_value() && needs_noise ? noise->contiguous() : at::Tensor();
  const bool rescale = threshold.has_value();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scheduler_step", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    const scalar_t* out_ptr = out.const_data_ptr<scalar_t>();
    const scalar_t* z_ptr = z.defined() ? z.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* prev_ptr = prev.mutable_data_ptr<scalar_t>();
    scalar_t* x0_ptr = x0.mutable_data_ptr<scalar_t>();
    const int64_t groups = (numel + 3) / 4;
    at::parallel_for(0, groups, 2048, [&](int64_t begin, int64_t end) {
      int64_t b = (begin * 4) / per_sample;
      int64_t boundary = (b + 1) * per_sample;
      for (int64_t g = begin; g < end; ++g) {
        double normals[4] = {0.0, 0.0, 0.0, 0.0};
        if (generate) step::normal4(seed, offset, static_cast<uint64_t>(g), normals);
        for (int64_t lane = 0; lane < 4; ++lane) {
          const int64_t i = g * 4 + lane;
          if (i >= numel) break;
          while (i >= boundary) {
            ++b;
            boundary += per_sample;
          }
          const step::Coefficients& k = coefficients[b];
          opmath_t noise_value = 0;
          if (k.sigma > 0.0) {
            noise_value = z_ptr ? static_cast<opmath_t>(z_ptr[i]) : static_cast<opmath_t>(normals[lane]);
          }
          opmath_t x0_value;
          const opmath_t next = step::update<opmath_t>(
              static_cast<opmath_t>(x_ptr[i]), static_cast<opmath_t>(out_ptr[i]), noise_value, k,
              static_cast<opmath_t>(thresholds[b]), rescale, &x0_value);
          prev_ptr[i] = static_cast<scalar_t>(next);
          x0_ptr[i] = static_cast<scalar_t>(x0_value);
        }
      }
    });
  });
  return {prev, x0};
}

}  // namespace

TORCH_LIBRARY_IMPL(patronus, CPU, m) { m.impl("scheduler_step", &scheduler_step_cpu); }

}  // namespace patronus
