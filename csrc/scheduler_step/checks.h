// Input checks of patronus::scheduler_step, shared by the CPU and CUDA launchers (ATen side).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>

#include "step.h"

namespace patronus {

inline step::Options check_scheduler_step(const at::Tensor& sample, const at::Tensor& model_output,
                                          const at::Tensor& timestep,
                                          const at::Tensor& prev_timestep,
                                          const at::Tensor& alphas_cumprod, int64_t mode,
                                          int64_t prediction, int64_t variance, double eta,
                                          double clip, bool recompute_eps,
                                          const c10::optional<at::Tensor>& threshold,
                                          const c10::optional<at::Tensor>& noise,
                                          const c10::optional<at::Tensor>& rng_state,
                                          const c10::optional<at::Tensor>& null_output,
                                          double guidance_scale, at::TensorList history,
                                          at::TensorList history_timestep) {
  TORCH_CHECK(sample.dim() >= 1, "scheduler_step: sample must be (B, ...)");
  TORCH_CHECK(model_output.sizes() == sample.sizes() &&
                  model_output.scalar_type() == sample.scalar_type(),
              "scheduler_step: model_output must match sample in shape and dtype");
  const int64_t batch = sample.size(0);
  for (const at::Tensor* t : {&timestep, &prev_timestep}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == batch && t->scalar_type() == at::kLong,
                "scheduler_step: timestep and prev_timestep must be (B,) int64");
    TORCH_CHECK(t->device() == sample.device(), "scheduler_step: timesteps on another device");
  }
  TORCH_CHECK(alphas_cumprod.dim() == 1 && alphas_cumprod.scalar_type() == at::kDouble &&
                  alphas_cumprod.device() == sample.device(),
              "scheduler_step: alphas_cumprod must be (T,) float64 on the sample's device");
  TORCH_CHECK(mode == step::kDDIM || mode == step::kDDPM || mode == step::kDPMSolverPP,
              "scheduler_step: mode is 0 (DDIM), 1 (DDPM) or 2 (DPM-Solver++)");
  TORCH_CHECK(history.size() == history_timestep.size() && history.size() <= 2,
              "scheduler_step: history and history_timestep hold the same number (0-2) of tensors");
  TORCH_CHECK(history.empty() || mode == step::kDPMSolverPP,
              "scheduler_step: previous predictions (history) are for DPM-Solver++ (mode 2) only");
  for (size_t i = 0; i < history.size(); ++i) {
    TORCH_CHECK(history[i].sizes() == sample.sizes() &&
                    history[i].scalar_type() == sample.scalar_type() &&
                    history[i].device() == sample.device(),
                "scheduler_step: history tensors must match sample in shape, dtype and device");
    TORCH_CHECK(history_timestep[i].dim() == 1 && history_timestep[i].size(0) == batch &&
                    history_timestep[i].scalar_type() == at::kLong &&
                    history_timestep[i].device() == sample.device(),
                "scheduler_step: history_timestep tensors must be (B,) int64 on the sample's device");
  }
  TORCH_CHECK(prediction >= step::kEpsilon && prediction <= step::kVelocity,
              "scheduler_step: prediction is 0 (epsilon), 1 (sample) or 2 (v)");
  TORCH_CHECK(variance == step::kPosterior || variance == step::kBeta,
              "scheduler_step: variance is 0 (posterior) or 1 (beta)");
  TORCH_CHECK(eta >= 0.0, "scheduler_step: eta must be >= 0");
  if (threshold.has_value()) {
    TORCH_CHECK(threshold->dim() == 1 && threshold->size(0) == batch &&
                    threshold->device() == sample.device() &&
                    at::isFloatingType(threshold->scalar_type()),
                "scheduler_step: threshold must be (B,) floating point on the sample's device");
  }
  if (noise.has_value()) {
    TORCH_CHECK(noise->sizes() == sample.sizes() && noise->scalar_type() == sample.scalar_type() &&
                    noise->device() == sample.device(),
                "scheduler_step: noise must match sample in shape, dtype and device");
  }
  if (rng_state.has_value()) {
    TORCH_CHECK(rng_state->dim() == 1 && rng_state->numel() == 2 &&
                    rng_state->scalar_type() == at::kLong &&
                    rng_state->device() == sample.device(),
                "scheduler_step: rng_state must be int64 [seed, offset] on the sample's device");
  }
  if (null_output.has_value()) {
    TORCH_CHECK(null_output->sizes() == sample.sizes() &&
                    null_output->scalar_type() == sample.scalar_type() &&
                    null_output->device() == sample.device(),
                "scheduler_step: null_output must match sample in shape, dtype and device");
  }
  TORCH_CHECK(std::isfinite(guidance_scale), "scheduler_step: guidance_scale must be finite");
  // decided without reading the levels (which would synchronise with a GPU)
  TORCH_CHECK(!(mode == step::kDDPM || eta > 0.0) || noise.has_value() || rng_state.has_value(),
              "scheduler_step: DDPM and DDIM with eta > 0 add noise: pass noise or rng_state");
  return step::Options{mode,         prediction, variance, eta, clip, recompute_eps,
                       1 + static_cast<int64_t>(history.size())};
}

}  // namespace patronus
