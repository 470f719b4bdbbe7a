// Op schemas of patronus._C. Kernels register per device in csrc/cpu and csrc/cuda.
#include <torch/library.h>

TORCH_LIBRARY(patronus, m) {
  // x_t[b] = signal_scale[b] * x0[b] + noise_scale[b] * noise[b]; not differentiable.
  m.def("q_sample(Tensor x0, Tensor noise, Tensor signal_scale, Tensor noise_scale) -> Tensor");
}
