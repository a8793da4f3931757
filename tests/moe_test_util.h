// What the MoE layer's tests share: a config with room for every token, an
// expert applied to one row by hand, random biases, and the layer's
// finite-difference gradient check.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "grad_check.h"
#include "ops/gelu.h"
#include "runtime/moe_layer.h"

namespace sy::moe_testing {

inline switchyard::MoeConfig moe_config(int G, int k) {
  switchyard::MoeConfig c;
  c.set_num_experts(G);
  c.set_top_k(k);
  c.set_capacity_factor(static_cast<float>(G));  // room for every token
  c.set_capacity_factor_eval(static_cast<float>(G));
  c.set_load_balance_coef(0.f);
  c.set_z_loss_coef(0.f);
  return c;
}

// Expert g applied to one row: gelu(x W1 + b1) W2 + b2; S = the hidden
// widths of the experts before g (the packed layout, ops/expert_ffn.h).
inline std::vector<float> expert_row(ParamStore& ps, const std::string& name, int g, const float* x, int64_t C,
                                     int64_t H, int64_t S = -1) {
  if (S < 0) S = g * H;  // equal widths
  const float* w1 = ps.find(name + ".experts.w1")->value.f32() + C * S;
  const float* b1 = ps.find(name + ".experts.b1")->value.f32() + S;
  const float* w2 = ps.find(name + ".experts.w2")->value.f32() + S * C;
  const float* b2 = ps.find(name + ".experts.b2")->value.f32() + g * C;
  std::vector<float> h(H), y(C);
  for (int64_t j = 0; j < H; ++j) {
    h[j] = b1[j];
    for (int64_t c = 0; c < C; ++c) h[j] += x[c] * w1[c * H + j];
  }
  Tensor at = testing::zeros({H});
  ops::gelu_forward(host_ctx(), at, Tensor::from_host(h));
  const float* a = at.f32();
  for (int64_t c = 0; c < C; ++c) {
    y[c] = b2[c];
    for (int64_t j = 0; j < H; ++j) y[c] += a[j] * w2[j * C + c];
  }
  return y;
}

inline void randomize_biases(ParamStore& ps, Rng& rng) {
  for (Param* p : ps.all())
    if (p->name.find(".b") != std::string::npos) testing::fill_normal(p->value, rng, 0.1f);
}

// Loss = y . R + router losses; every parameter and the input against finite
// differences. The choice of experts is held fixed by a large margin: FD steps
// are small next to the gaps between router scores.
inline void check_layer_gradients(switchyard::MoeConfig cfg, uint64_t seed, const FfnOptions& ffn = {}) {
  Rng rng(seed);
  const int64_t C = 6, H = 7, N = 10;
  ParamStore ps;
  MoeLayer moe(host_ctx(), ps, "m", C, cfg, H, rng, 0.4f, 0.4f, 7, nullptr, ffn);
  ps.finalize(host_ctx());
  randomize_biases(ps, rng);
  Tensor x = testing::randn({N, C}, rng), R = testing::randn({N, C}, rng);
  auto loss = [&] {
    Tensor y = moe.forward(x);
    return testing::dot(y, R) + moe.aux_loss();
  };
  loss();
  ps.zero_grad(host_ctx());
  Tensor dx = moe.backward(R);
  std::vector<std::pair<std::string, Tensor>> grads;
  for (Param* p : ps.all()) grads.emplace_back(p->name, p->grad.clone());
  for (auto& [name, g] : grads) testing::expect_gradient(name, ps.find(name)->value, g, loss, 1e-3, 3e-2);
  testing::expect_gradient("x", x, dx, loss, 1e-3, 3e-2);
}

}  // namespace sy::moe_testing
