// CPU kernel patronus::scheduler_step_fwd (of the op patronus::scheduler_step): one parallel
// pass over the elements in chunks of a sample, a branch-free vectorisable loop per chunk,
// float32 opmath for half types.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "checks.h"
#include "../common/target_clones.h"

namespace patronus {
namespace {

constexpr int64_t kChunk = 4096;  // elements per task (a multiple of 4: whole Philox groups)

// A sample's coefficients in opmath, in the forms the element loop uses.
template <typename opmath_t>
struct Elementwise {
  opmath_t x0_x, x0_out, eps_x, eps_out, eps_x0_x, eps_x0_x0, prev_x0, prev_eps, prev_x, sigma;
  opmath_t history1, history2;
  opmath_t limit, divisor;
  bool recompute;
  Elementwise(const step::Coefficients& c, double threshold, bool rescale)
      : x0_x(c.x0_x), x0_out(c.x0_out), eps_x(c.eps_x), eps_out(c.eps_out),
        eps_x0_x(c.eps_x0_x), eps_x0_x0(c.eps_x0_x0), prev_x0(c.prev_x0), prev_eps(c.prev_eps),
        prev_x(c.prev_x), sigma(c.sigma), history1(c.history1), history2(c.history2),
        limit(threshold), divisor(rescale ? threshold : 1.0), recompute(c.eps_x0_x != 0.0) {}
};

// The element loop over one contiguous run of a sample: branch-free (vectorisable), the operations
// of step::update in the same order, so the CPU, CUDA and reference steps agree bit for bit.
// HISTORY previous x0 predictions (m1, m2) enter the multistep solvers.
#define PATRONUS_STEP_LOOP(CLIP, NOISE, HISTORY)                                           \
  for (int64_t i = 0; i < length; ++i) {                                                 \
    const opmath_t xv = static_cast<opmath_t>(x[i]), ov = static_cast<opmath_t>(out[i]); \
    opmath_t x0v = k.x0_x * xv + k.x0_out * ov;                                          \
    opmath_t eps = k.eps_x * xv + k.eps_out * ov;                                        \
    if (CLIP) {                                                                          \
      x0v = step::clamp(x0v, -k.limit, k.limit) / k.divisor;                             \
      eps = k.recompute ? k.eps_x0_x * xv + k.eps_x0_x0 * x0v : eps;                     \
    }                                                                                    \
    opmath_t next = k.prev_x0 * x0v + k.prev_eps * eps + k.prev_x * xv;                  \
    if (NOISE) next = next + k.sigma * noise[i];                                         \
    if (HISTORY > 0) next = next + k.history1 * static_cast<opmath_t>(m1[i]);            \
    if (HISTORY > 1) next = next + k.history2 * static_cast<opmath_t>(m2[i]);            \
    prev[i] = static_cast<scalar_t>(next);                                               \
    x0[i] = static_cast<scalar_t>(x0v);                                                  \
  }

// the multistep solvers add no noise: history and noise never meet
#define PATRONUS_STEP_CASES(CLIP)                   \
  if (history == 1) {                               \
    PATRONUS_STEP_LOOP(CLIP, false, 1)              \
  } else if (history == 2) {                        \
    PATRONUS_STEP_LOOP(CLIP, false, 2)              \
  } else if (noisy) {                               \
    PATRONUS_STEP_LOOP(CLIP, true, 0)               \
  } else {                                          \
    PATRONUS_STEP_LOOP(CLIP, false, 0)              \
  }

#define PATRONUS_STEP_CHUNK_BODY \
  if (clip) {                    \
    PATRONUS_STEP_CASES(true)    \
  } else {                       \
    PATRONUS_STEP_CASES(false)   \
  }

// `out` is the model output (scalar_t) or, when guided, the guided output in opmath (out_t);
// m1, m2 the previous x0 predictions (the first `history` of them are read).
// The pointers never alias (outputs are fresh tensors, buffers are the task's own): __restrict__
// lets the compiler vectorise without run-time overlap checks, which six pointers would exceed.
template <typename scalar_t, typename opmath_t, typename out_t>
void step_chunk(const scalar_t* __restrict__ x, const out_t* __restrict__ out,
                const scalar_t* __restrict__ m1, const scalar_t* __restrict__ m2,
                scalar_t* __restrict__ prev, scalar_t* __restrict__ x0,
                const opmath_t* __restrict__ noise, int64_t length,
                const Elementwise<opmath_t>& k, bool clip, bool noisy, int history) {
  PATRONUS_STEP_CHUNK_BODY
}

// float32, the common case, in AVX-512 / AVX2 / baseline clones
template <>
PATRONUS_CLONES void step_chunk<float, float, float>(
    const float* __restrict__ x, const float* __restrict__ out, const float* __restrict__ m1,
    const float* __restrict__ m2, float* __restrict__ prev, float* __restrict__ x0,
    const float* __restrict__ noise, int64_t length, const Elementwise<float>& k, bool clip,
    bool noisy, int history) {
  using scalar_t = float;
  using opmath_t = float;
  PATRONUS_STEP_CHUNK_BODY
}

// The guided model output of elements [start, start + length): null + w (out - null).
template <typename scalar_t, typename opmath_t>
void fill_guided(const scalar_t* out, const scalar_t* null_out, opmath_t w, int64_t start,
                 int64_t length, opmath_t* result) {
  for (int64_t i = 0; i < length; ++i) {
    result[i] = step::guided(static_cast<opmath_t>(out[start + i]),
                             static_cast<opmath_t>(null_out[start + i]), w);
  }
}

// The noise of elements [start, start + length): given, or Philox normals of their groups.
template <typename scalar_t, typename opmath_t>
void fill_noise(const scalar_t* given, uint64_t seed, uint64_t offset, int64_t start,
                int64_t length, opmath_t* out) {
  if (given != nullptr) {
    for (int64_t i = 0; i < length; ++i) out[i] = static_cast<opmath_t>(given[start + i]);
    return;
  }
  double normals[4];
  for (int64_t i = 0; i < length; ++i) {
    const int64_t element = start + i;
    if (i == 0 || element % 4 == 0) step::normal4(seed, offset, element / 4, normals);
    out[i] = static_cast<opmath_t>(normals[element % 4]);
  }
}

std::tuple<at::Tensor, at::Tensor> scheduler_step_cpu(
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
  const int history_count = static_cast<int>(history.size());
  std::vector<at::Tensor> previous, previous_levels;
  for (int i = 0; i < history_count; ++i) {
    previous.push_back(history[i].contiguous());
    previous_levels.push_back(history_timestep[i].contiguous());
  }
  const at::Tensor x = sample.contiguous();
  const at::Tensor out = model_output.contiguous();
  const at::Tensor unconditioned =
      null_output.has_value() ? null_output->contiguous() : at::Tensor();
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
    double abar_previous[2] = {0.0, 0.0};
    for (int i = 0; i < history_count; ++i) {
      const int64_t s = previous_levels[i].const_data_ptr<int64_t>()[b];
      TORCH_CHECK(s >= -1 && s < steps, "scheduler_step: timesteps must lie in [-1, ", steps, ")");
      abar_previous[i] = s < 0 ? 1.0 : abar[s];
    }
    coefficients[b] = step::coefficients(c < 0 ? 1.0 : abar[c], p < 0 ? 1.0 : abar[p], options,
                                         abar_previous[0], abar_previous[1]);
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
    const scalar_t* null_ptr =
        unconditioned.defined() ? unconditioned.const_data_ptr<scalar_t>() : nullptr;
    const opmath_t w = static_cast<opmath_t>(guidance_scale);
    const scalar_t* z_ptr = z.defined() ? z.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* m1_ptr = history_count > 0 ? previous[0].const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* m2_ptr = history_count > 1 ? previous[1].const_data_ptr<scalar_t>() : nullptr;
    scalar_t* prev_ptr = prev.mutable_data_ptr<scalar_t>();
    scalar_t* x0_ptr = x0.mutable_data_ptr<scalar_t>();
    const int64_t chunks_per_sample = (per_sample + kChunk - 1) / kChunk;
    at::parallel_for(0, batch * chunks_per_sample, 1, [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> noise_buffer(kChunk);
      std::vector<opmath_t> guided_buffer(null_ptr != nullptr ? kChunk : 0);
      for (int64_t job = begin; job < end; ++job) {
        const int64_t b = job / chunks_per_sample;
        const int64_t start = b * per_sample + (job % chunks_per_sample) * kChunk;
        const int64_t length = std::min(kChunk, (b + 1) * per_sample - start);
        const Elementwise<opmath_t> k(coefficients[b], thresholds[b], rescale);
        const bool noisy = coefficients[b].sigma > 0.0;
        if (noisy) {
          fill_noise(z_ptr, seed, offset, start, length, noise_buffer.data());
        }
        const bool clips = thresholds[b] > 0.0;
        if (null_ptr != nullptr) {
          fill_guided(out_ptr, null_ptr, w, start, length, guided_buffer.data());
          step_chunk<scalar_t, opmath_t, opmath_t>(
              x_ptr + start, guided_buffer.data(), m1_ptr ? m1_ptr + start : nullptr,
              m2_ptr ? m2_ptr + start : nullptr, prev_ptr + start, x0_ptr + start,
              noise_buffer.data(), length, k, clips, noisy, history_count);
        } else {
          step_chunk<scalar_t, opmath_t, scalar_t>(
              x_ptr + start, out_ptr + start, m1_ptr ? m1_ptr + start : nullptr,
              m2_ptr ? m2_ptr + start : nullptr, prev_ptr + start, x0_ptr + start,
              noise_buffer.data(), length, k, clips, noisy, history_count);
        }
      }
    });
  });
  return {prev, x0};
}

}  // namespace

TORCH_LIBRARY_IMPL(patronus, CPU, m) { m.impl("scheduler_step_fwd", &scheduler_step_cpu); }

}  // namespace patronus
