// Schemas of the compiled kernels in patronus._C. The public ops (patronus::q_sample,
// patronus::prototype_min_distance, patronus::scheduler_step, ...) are torch.library custom ops
// defined in patronus/ops/, with their fake kernels, autograd and references; on the `cpp`
// backend they call these kernels, named <op>_fwd (and <op>_bwd where the op is differentiable).
// Kernels register per device in csrc/<op>/cpu.cpp and csrc/<op>/cuda.cu (see CONTRIBUTING.md).
#include <torch/library.h>

TORCH_LIBRARY(patronus, m) {
  // x_t[b] = signal_scale[b] * x0[b] + noise_scale[b] * noise[b], float32 opmath for half types.
  m.def("q_sample_fwd(Tensor x0, Tensor noise, Tensor signal_scale, Tensor noise_scale) -> Tensor");
  // features (B, D, H, W) or (B, N, D), prototypes (P, D) -> (min_dist (B, P), patch_index (B, P)).
  m.def("prototype_min_distance_fwd(Tensor features, Tensor prototypes) -> (Tensor, Tensor)");
  // -> (grad_features like features, grad_prototypes like prototypes); deterministic.
  m.def(
      "prototype_min_distance_bwd(Tensor grad, Tensor features, Tensor prototypes, "
      "Tensor index) -> (Tensor, Tensor)");
  // The fused scheduler step (csrc/scheduler_step/step.h): moves `sample` from the levels
  // `timestep` to `prev_timestep` ((B,) int64, -1 = clean) with `alphas_cumprod` (T,) float64,
  // given the model output. mode 0 DDIM / 1 DDPM; prediction 0 epsilon / 1 sample / 2 v;
  // variance 0 posterior / 1 beta; clip > 0 clamps x0; threshold (B,) clamps and rescales x0 per
  // sample; noise, or rng_state int64 [seed, offset] for in-kernel Philox noise; null_output
  // (the unconditioned model output) guides: null + guidance_scale (out - null). mode 2 is
  // DPM-Solver++ of order 1 + len(history): history holds the previous x0 predictions (the x0
  // outputs of the previous steps, most recent first), history_timestep their levels ((B,) int64
  // each). Returns (prev, x0).
  m.def(
      "scheduler_step_fwd(Tensor sample, Tensor model_output, Tensor timestep, "
      "Tensor prev_timestep, Tensor alphas_cumprod, int mode, int prediction, int variance, "
      "float eta, float clip, bool recompute_eps, Tensor? threshold, Tensor? noise, "
      "Tensor? rng_state, Tensor? null_output, float guidance_scale, Tensor[] history, "
      "Tensor[] history_timestep) -> (Tensor, Tensor)");
}
