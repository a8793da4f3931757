// The harness of the backend op tests (tests/backend_ops_test.cc says what
// they check): an op case (inputs from a seed, outputs poisoned or zeroed,
// the run), the input makers and output shapes the cases share, and the
// fixture that runs a test on each backend. The cases themselves are in
// tests/backend_ops/cases_*.cc, one file a family of ops.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <tuple>

#include "../grad_check.h"
#include "core/device_runtime.h"
#include "core/rng.h"
#include "ops/adamw.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/depth_gate.h"
#include "ops/dispatch.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/expert_ffn.h"
#include "ops/finite.h"
#include "ops/gelu.h"
#include "ops/hash_routing.h"
#include "ops/heads.h"
#include "ops/layernorm.h"
#include "ops/matmul.h"
#include "ops/permute.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/sinkhorn.h"
#include "ops/sparse_attention.h"
#include "ops/random.h"
#include "ops/routed_attention.h"
#ifdef SY_WITH_CUDA
#include "ops/cuda/attention_variants.h"
#include "ops/cuda/attention_varlen.h"
#include "ops/cuda/gemm.h"
#endif
#include "ops/router_loss.h"
#include "ops/routing.h"
#include "ops/swiglu.h"
#include "runtime/config.h"
#include "runtime/trainer.h"

namespace sy::op_test {

enum class Tol { exact, f32, bf16 };

// One op case: inputs built on the host from a seed; outputs allocated on the
// backend (poisoned unless they accumulate, then zeroed); run on the backend.
struct OpCase {
  std::string name;
  Tol tol;
  std::function<std::vector<Tensor>(Rng&)> inputs;
  // Output shapes and dtypes, and whether each accumulates (starts at zero).
  std::function<std::vector<std::pair<Tensor, bool>>(Ctx&, const std::vector<Tensor>&)> outputs;
  std::function<void(Ctx&, const std::vector<Tensor>&, std::vector<Tensor>&)> run;
  bool on_cuda = true;  // false: the op has no CUDA kernels yet (the CUDA instance skips it)
};

inline Tensor randn(Shape s, Rng& rng, float std = 1.f) {
  Tensor t = Tensor::empty(std::move(s), DType::f32, host_ctx());
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = static_cast<float>(rng.normal() * std);
  return t;
}
inline Tensor abs_randn(Shape s, Rng& rng, float std = 1.f) {
  Tensor t = randn(std::move(s), rng, std);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = std::fabs(t.f32()[i]);
  return t;
}
inline Tensor ints(Shape s, Rng& rng, int64_t below) {
  Tensor t = Tensor::empty(std::move(s), DType::i32, host_ctx());
  for (int64_t i = 0; i < t.numel(); ++i) t.data<int32_t>()[i] = static_cast<int32_t>(rng.below(below));
  return t;
}
inline Tensor out(Ctx& ctx, Shape s, DType d = DType::f32) { return Tensor::empty(std::move(s), d, ctx); }

// NaN in every float element (all-ones bits for integers).
inline void poison(Tensor& t, Ctx& ctx) {
  Tensor h = Tensor::empty(t.shape(), t.dtype(), host_ctx());
  if (t.dtype() == DType::f32)
    std::fill_n(h.f32(), h.numel(), std::numeric_limits<float>::quiet_NaN());
  else
    std::memset(h.raw(), 0xff, h.nbytes());
  t.copy_from(h, ctx);
}

using Ins = std::vector<Tensor>;
using Outs = std::vector<std::pair<Tensor, bool>>;

// An output that is poisoned before the run, and one that starts at zero (the op accumulates).
inline std::pair<Tensor, bool> fresh(Ctx& ctx, Shape s, DType d = DType::f32) { return {out(ctx, std::move(s), d), false}; }
inline std::pair<Tensor, bool> acc(Ctx& ctx, Shape s, DType d = DType::f32) { return {out(ctx, std::move(s), d), true}; }

// Host values (losses, statistics, a Route's host fields) into an output on ctx.
template <class T>
inline void put(Ctx& ctx, Tensor& o, const std::vector<T>& v) {
  o.copy_from(Tensor::from_host(v), ctx);
}

// Row-stochastic probabilities (N, G): softmax of normal logits, on the host.
inline Tensor probs_of(Shape s, Rng& rng, float std = 2.f) {
  Tensor l = randn(s, rng, std), p = Tensor::empty(s, DType::f32, host_ctx());
  ops::router_scores(host_ctx(), p, l, ops::ScoreFn::softmax);
  return p;
}

// Expert FFNs forward and backward in bf16 mode: in = buf, w1, b1, w2, b2,
// dout; o = out, pre, dbuf, dw1, db1, dw2, db2. pre16: pre is bf16 (GELU's
// bf16 pre and dact, ops/expert_ffn.h), poisoned first, o[1] its values.
inline void expert_ffn_bf16(Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o, const std::vector<int32_t>& offset,
                     const ops::ExpertLayout& layout, bool pre16 = false) {
  Tensor w1 = out(x, in[1].shape(), DType::bf16), w2 = out(x, in[3].shape(), DType::bf16);
  ops::to_bf16(x, w1, in[1]);
  ops::to_bf16(x, w2, in[3]);
  const ops::ExpertWeights w{in[1], in[2], in[3], in[4], &w1, &w2};
  Tensor pre = pre16 ? out(x, o[1].shape(), DType::bf16) : o[1];
  if (pre16) poison(pre, x);
  ops::expert_ffn_forward(x, {o[0], pre, in[0], offset, layout, w});
  ops::expert_ffn_backward(x, {o[2], {o[3], o[4], o[5], o[6]}, in[5], in[0], pre, offset, layout, w});
  if (pre16) ops::to_f32(x, o[1], pre);
}

// The realised-cost budget cases' costs and route: top-2 over 6 groups,
// capacity drops (factor 0.8) and budget drops (B = 2).
inline std::vector<float> budget_case_costs() { return {1.f, 2.f, 0.5f, 1.f, 3.f, 1.f}; }
inline ops::Route budget_case_route(Ctx& x, const Tensor& probs) {
  ops::Route route;
  ops::TokensChooseParams p;
  p.k = 2;
  p.capacity_factor = 0.8f;
  ops::tokens_choose(x, route, probs, p);
  ops::BudgetParams b;
  b.cost = budget_case_costs();
  b.budget = 2.0;
  ops::apply_budget(x, route, probs, b);
  return route;
}

// A Route's host part: capacity, assigned, dropped, budget_dropped, host_offset.
inline std::vector<int32_t> route_host(const ops::Route& r) {
  std::vector<int32_t> v{static_cast<int32_t>(r.capacity), static_cast<int32_t>(r.assigned),
                         static_cast<int32_t>(r.dropped), static_cast<int32_t>(r.budget_dropped)};
  v.insert(v.end(), r.host_offset.begin(), r.host_offset.end());
  return v;
}

// Outputs of a route over N items x k assignments and G groups: group, slot,
// weight, count, offset, host part.
inline Outs route_outputs(Ctx& x, int64_t N, int64_t k, int64_t G) {
  return {fresh(x, {N * k}, DType::i32), fresh(x, {N * k}, DType::i32), fresh(x, {N * k}), fresh(x, {G}, DType::i32),
          fresh(x, {G + 1}, DType::i32), fresh(x, {G + 5}, DType::i32)};
}
inline void put_route(Ctx& x, const ops::Route& r, std::vector<Tensor>& o) {
  o[0].copy_from(r.group, x);
  o[1].copy_from(r.slot, x);
  o[2].copy_from(r.weight, x);
  o[3].copy_from(r.count, x);
  o[4].copy_from(r.offset, x);
  put(x, o[5], route_host(r));
}

// A tokens-choose case on given probabilities (routing decisions: exact).
// params(in) sets everything but k and the runs; in holds probs (N, G), a
// selection bias (G) and, with_keys, selection keys (N, G); runs > 1: N / runs
// items per run, each run with its own G groups (TokensChooseParams::segment).
// edit, if given, changes the inputs once drawn.
inline OpCase tokens_choose_case(const std::string& name, int64_t N, int64_t G, int k,
                          std::function<ops::TokensChooseParams(const Ins&)> params, bool with_keys = false,
                          int64_t runs = 1, std::function<void(Ins&)> edit = nullptr) {
  return {name, Tol::exact,
          [=](Rng& r) {
            Ins in{probs_of({N, G}, r), randn({G}, r, 0.05f)};
            if (with_keys) in.push_back(randn({N, G}, r));
            if (edit) edit(in);
            return in;
          },
          [=](Ctx& x, const Ins&) { return route_outputs(x, N, k, G * runs); },
          [=](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
            ops::TokensChooseParams p = params(in);
            p.k = k;
            if (runs > 1) p.segment = N / runs;
            ops::Route route;
            ops::tokens_choose(x, route, in[0], p);
            put_route(x, route, o);
          }};
}

// The same bytes, and the relative L2 error of got against want (host
// tensors): grad_check.h's.
inline bool bitwise_equal(const Tensor& a, const Tensor& b) { return testing::same_bits(a, b); }
inline double rel_l2(const Tensor& got, const Tensor& want) { return testing::rel_diff(got, want); }

// Runs a case on ctx; returns its outputs on the host.
inline std::vector<Tensor> run_case(const OpCase& c, Ctx& ctx, const std::vector<Tensor>& host_inputs) {
  std::vector<Tensor> in;
  for (const Tensor& t : host_inputs) in.push_back(t.to(ctx));
  std::vector<Tensor> o;
  for (auto& [t, accumulates] : c.outputs(ctx, in)) {
    if (accumulates)
      t.zero(ctx);
    else
      poison(t, ctx);
    o.push_back(t);
  }
  c.run(ctx, in, o);
  std::vector<Tensor> host;
  for (const Tensor& t : o) host.push_back(t.to(host_ctx()));
  return host;
}

class BackendOps : public ::testing::TestWithParam<DeviceKind> {
 protected:
  Ctx& ctx() {
    if (GetParam() == DeviceKind::cpu) return host_ctx();
    static std::unique_ptr<DeviceRuntime> rt = DeviceRuntime::create(0);
    return rt->ctx();
  }
  void SetUp() override {
    if (GetParam() == DeviceKind::cuda && !cuda_available())
      GTEST_SKIP() << "no GPU visible (or built without CUDA): the CUDA backend's ops are not tested here";
  }
};

// The op cases, one function a family (tests/backend_ops/cases_<family>.cc),
// appended in this order by cases() (tests/backend_ops_test.cc).
void add_dense_cases(std::vector<OpCase>& c);     // GEMMs, norms, activations, embedding, loss, attention
void add_layout_cases(std::vector<OpCase>& c);    // elementwise, random, layout, the optimizer
void add_routing_cases(std::vector<OpCase>& c);   // routes, gating, Sinkhorn, hashing, the budget
void add_dispatch_cases(std::vector<OpCase>& c);  // moving rows, router losses
void add_sparse_cases(std::vector<OpCase>& c);    // routed attention, key-set attention
void add_expert_cases(std::vector<OpCase>& c);    // bf16 GEMMs, the expert FFNs

}  // namespace sy::op_test
