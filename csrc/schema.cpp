// Op schemas of patronus._C. Kernels register per device in csrc/cpu and csrc/cuda.
#include <torch/library.h>

TORCH_LIBRARY(patronus, m) {
  // x_t[b] = signal_scale[b] * x0[b] + noise_scale[b] * noise[b]; not differentiable.
  m.def("q_sample(Tensor x0, Tensor noise, Tensor signal_scale, Tensor noise_scale) -> Tensor");
  // Backend kernels of the Python op patronus::prototype_min_distance (CPU): features
  // (B, D, H, W) or (B, N, D), prototypes (P, D) -> (min_dist (B, P), patch_index (B, P)).
  m.def("prototype_min_distance_fwd(Tensor features, Tensor prototypes) -> (Tensor, Tensor)");
  // -> (grad_features like features, grad_prototypes like prototypes); deterministic.
  m.def(
      "prototype_min_distance_bwd(Tensor grad, Tensor features, Tensor prototypes, "
      "Tensor index) -> (Tensor, Tensor)");
}
