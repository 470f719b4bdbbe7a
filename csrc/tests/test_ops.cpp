// C++ tests of the patronus ops through the dispatcher, against libtorch only.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>

#include <cstdlib>
#include <iostream>

namespace {

int failures = 0;

void check(bool condition, const char* what) {
  if (!condition) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

at::Tensor q_sample(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& a,
                    const at::Tensor& s) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("patronus::q_sample", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&)>();
  return op.call(x0, noise, a, s);
}

void test_q_sample_matches_formula() {
  const at::Tensor x0 = at::randn({4, 3, 5, 5});
  const at::Tensor noise = at::randn({4, 3, 5, 5});
  const at::Tensor a = at::rand({4}, at::kDouble);
  const at::Tensor s = at::rand({4}, at::kDouble);
  const at::Tensor expected = a.to(at::kFloat).view({4, 1, 1, 1}) * x0 +
                              s.to(at::kFloat).view({4, 1, 1, 1}) * noise;
  check(at::allclose(q_sample(x0, noise, a, s), expected, 1e-5, 1e-6), "q_sample float32");
  const at::Tensor half = q_sample(x0.to(at::kHalf), noise.to(at::kHalf), a, s);
  check(half.scalar_type() == at::kHalf, "q_sample keeps half");
  check(at::allclose(half.to(at::kFloat), expected, 1e-2, 1e-2), "q_sample half");
}

void test_q_sample_rejects_bad_scales() {
  bool threw = false;
  try {
    q_sample(at::randn({2, 3}), at::randn({2, 3}), at::rand({3}), at::rand({2}));
  } catch (const c10::Error&) {
    threw = true;
  }
  check(threw, "q_sample rejects (B,) mismatch");
}

}  // namespace

int main() {
  test_q_sample_matches_formula();
  test_q_sample_rejects_bad_scales();
  if (failures == 0) {
    std::cout << "all C++ op tests passed\n";
  }
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
