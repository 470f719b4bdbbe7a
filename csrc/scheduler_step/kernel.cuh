// CUDA kernel of the scheduler step, torch-free (the launcher cuda.cu beside it instantiates it
// for the ATen types; `nvcc -c csrc/tests/nvcc_check.cu` compiles it anywhere). One launch: each
// thread owns groups of four consecutive elements (one Philox call, one vector load/store of four
// elements when aligned), computes its samples' coefficients from the schedule table in device
// memory, and never synchronises with the host. The random state is read from device memory, so
// a captured CUDA graph draws new noise when the state is advanced between replays.
#pragma once

#include <cstdint>

#include "step.h"

namespace patronus {
namespace step {

template <typename scalar_t>
struct alignas(sizeof(scalar_t) * 4) Vec4 {
  scalar_t v[4];
};

struct KernelArgs {
  const int64_t* timestep;
  const int64_t* prev_timestep;
  const double* alphas_cumprod;
  const double* threshold;  // (B,) or nullptr: static clip
  const int64_t* rng_state;  // [seed, offset] or nullptr: noise given (or not needed)
  const int64_t* history_timestep[2];  // levels of the previous x0 predictions (DPM-Solver++)
  int history;                         // how many previous predictions are given (0-2)
  double guidance_scale;     // w, used where null_output is given
  int64_t steps;             // T: levels are clamped to [-1, T - 1] (checking would need a sync)
  int64_t numel;
  int64_t per_sample;
  Options options;
};

__device__ __forceinline__ double level_abar(const KernelArgs& a, int64_t level) {
  const int64_t last = a.steps - 1;
  const int64_t clamped = level < last ? level : last;
  return clamped < 0 ? 1.0 : a.alphas_cumprod[clamped];
}

__device__ __forceinline__ Coefficients sample_coefficients(const KernelArgs& a, int64_t b) {
  const double abar_s1 = a.history > 0 ? level_abar(a, a.history_timestep[0][b]) : 0.0;
  const double abar_s2 = a.history > 1 ? level_abar(a, a.history_timestep[1][b]) : 0.0;
  return coefficients(level_abar(a, a.timestep[b]), level_abar(a, a.prev_timestep[b]), a.options,
                      abar_s1, abar_s2);
}

template <typename scalar_t, typename opmath_t, bool kVectorized>
__global__ void scheduler_step_kernel(const scalar_t* __restrict__ sample,
                                      const scalar_t* __restrict__ model_output,
                                      const scalar_t* __restrict__ null_output,
                                      const scalar_t* __restrict__ noise,
                                      const scalar_t* __restrict__ history1,
                                      const scalar_t* __restrict__ history2,
                                      scalar_t* __restrict__ prev, scalar_t* __restrict__ x0,
                                      KernelArgs args) {
  const int64_t groups = (args.numel + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const bool generate = args.rng_state != nullptr;
  const uint64_t seed = generate ? static_cast<uint64_t>(args.rng_state[0]) : 0;
  const uint64_t offset = generate ? static_cast<uint64_t>(args.rng_state[1]) : 0;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += stride) {
    const int64_t base = g * 4;
    scalar_t x[4], out[4], null_v[4], z[4], m1[4], m2[4], prev_v[4], x0_v[4];
    if (kVectorized) {
      const Vec4<scalar_t> xs = reinterpret_cast<const Vec4<scalar_t>*>(sample)[g];
      const Vec4<scalar_t> os = reinterpret_cast<const Vec4<scalar_t>*>(model_output)[g];
      for (int lane = 0; lane < 4; ++lane) {
        x[lane] = xs.v[lane];
        out[lane] = os.v[lane];
      }
      if (null_output != nullptr) {
        const Vec4<scalar_t> ns = reinterpret_cast<const Vec4<scalar_t>*>(null_output)[g];
        for (int lane = 0; lane < 4; ++lane) null_v[lane] = ns.v[lane];
      }
      if (noise != nullptr) {
        const Vec4<scalar_t> zs = reinterpret_cast<const Vec4<scalar_t>*>(noise)[g];
        for (int lane = 0; lane < 4; ++lane) z[lane] = zs.v[lane];
      }
      if (args.history > 0) {
        const Vec4<scalar_t> ms = reinterpret_cast<const Vec4<scalar_t>*>(history1)[g];
        for (int lane = 0; lane < 4; ++lane) m1[lane] = ms.v[lane];
      }
      if (args.history > 1) {
        const Vec4<scalar_t> ms = reinterpret_cast<const Vec4<scalar_t>*>(history2)[g];
        for (int lane = 0; lane < 4; ++lane) m2[lane] = ms.v[lane];
      }
    } else {
      for (int lane = 0; lane < 4; ++lane) {
        const int64_t i = base + lane < args.numel ? base + lane : args.numel - 1;
        x[lane] = sample[i];
        out[lane] = model_output[i];
        if (null_output != nullptr) null_v[lane] = null_output[i];
        if (noise != nullptr) z[lane] = noise[i];
        if (args.history > 0) m1[lane] = history1[i];
        if (args.history > 1) m2[lane] = history2[i];
      }
    }
    double normals[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t b = base / args.per_sample;
    Coefficients k = sample_coefficients(args, b);
    if (generate) normal4(seed, offset, static_cast<uint64_t>(g), normals);
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t i = base + lane;
      if (i / args.per_sample != b) {
        b = i / args.per_sample;
        if (b < args.numel / args.per_sample) k = sample_coefficients(args, b);
      }
      const double limit = args.threshold != nullptr && i < args.numel ? args.threshold[b]
                                                                        : args.options.clip;
      opmath_t noise_value = 0;
      if (k.sigma > 0.0) {
        noise_value = noise != nullptr ? static_cast<opmath_t>(z[lane])
                                       : static_cast<opmath_t>(normals[lane]);
      }
      opmath_t out_value = static_cast<opmath_t>(out[lane]);
      if (null_output != nullptr) {
        out_value = guided<opmath_t>(out_value, static_cast<opmath_t>(null_v[lane]),
                                     static_cast<opmath_t>(args.guidance_scale));
      }
      const opmath_t m1_value = args.history > 0 ? static_cast<opmath_t>(m1[lane]) : opmath_t(0);
      const opmath_t m2_value = args.history > 1 ? static_cast<opmath_t>(m2[lane]) : opmath_t(0);
      opmath_t x0_value;
      const opmath_t next = update<opmath_t>(
          static_cast<opmath_t>(x[lane]), out_value, noise_value, k, static_cast<opmath_t>(limit),
          args.threshold != nullptr, args.history, m1_value, m2_value, &x0_value);
      prev_v[lane] = static_cast<scalar_t>(next);
      x0_v[lane] = static_cast<scalar_t>(x0_value);
    }
    if (kVectorized) {
      Vec4<scalar_t> ps, xs;
      for (int lane = 0; lane < 4; ++lane) {
        ps.v[lane] = prev_v[lane];
        xs.v[lane] = x0_v[lane];
      }
      reinterpret_cast<Vec4<scalar_t>*>(prev)[g] = ps;
      reinterpret_cast<Vec4<scalar_t>*>(x0)[g] = xs;
    } else {
      for (int lane = 0; lane < 4 && base + lane < args.numel; ++lane) {
        prev[base + lane] = prev_v[lane];
        x0[base + lane] = x0_v[lane];
      }
    }
  }
}

}  // namespace step
}  // namespace patronus
