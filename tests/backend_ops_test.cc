// Every op through its entry point on every backend (ggml's test-backend-ops):
// fresh random inputs, outputs poisoned with NaN before each run (so an
// output an op forgets to write shows up), every op run twice and compared
// bit for bit (class R), and on CUDA compared with the CPU reference run on
// the same inputs by tolerance class:
//   E  exact (routing decisions, integer results, data movement)
//   F  fp32: relative L2 error <= 1e-5
// (bf16 class B joins when the bf16 kernels do.) Without a GPU the CUDA
// instances skip and say so.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>

#include "core/device_runtime.h"
#include "core/rng.h"
#include "ops/adamw.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/dispatch.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/expert_ffn.h"
#include "ops/gelu.h"
#include "ops/heads.h"
#include "ops/layernorm.h"
#include "ops/matmul.h"
#include "ops/permute.h"
#include "ops/random.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/router_loss.h"
#include "ops/routing.h"
#include "ops/swiglu.h"

namespace sy {
namespace {

enum class Tol { exact, f32 };

// One op case: inputs built on the host from a seed; outputs allocated on the
// backend (poisoned unless they accumulate, then zeroed); run on the backend.
struct OpCase {
  std::string name;
  Tol tol;
  std::function<std::vector<Tensor>(Rng&)> inputs;
  // Output shapes and dtypes, and whether each accumulates (starts at zero).
  std::function<std::vector<std::pair<Tensor, bool>>(Ctx&, const std::vector<Tensor>&)> outputs;
  std::function<void(Ctx&, const std::vector<Tensor>&, std::vector<Tensor>&)> run;
};

Tensor randn(Shape s, Rng& rng, float std = 1.f) {
  Tensor t = Tensor::empty(std::move(s), DType::f32, host_ctx());
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = static_cast<float>(rng.normal() * std);
  return t;
}
Tensor ints(Shape s, Rng& rng, int64_t below) {
  Tensor t = Tensor::empty(std::move(s), DType::i32, host_ctx());
  for (int64_t i = 0; i < t.numel(); ++i) t.data<int32_t>()[i] = static_cast<int32_t>(rng.below(below));
  return t;
}
Tensor out(Ctx& ctx, Shape s, DType d = DType::f32) { return Tensor::empty(std::move(s), d, ctx); }

// NaN in every float element (all-ones bits for integers).
void poison(Tensor& t, Ctx& ctx) {
  Tensor h = Tensor::empty(t.shape(), t.dtype(), host_ctx());
  if (t.dtype() == DType::f32)
    std::fill_n(h.f32(), h.numel(), std::numeric_limits<float>::quiet_NaN());
  else
    std::memset(h.raw(), 0xff, h.nbytes());
  t.copy_from(h, ctx);
}

std::vector<OpCase> cases() {
  std::vector<OpCase> c;
  c.push_back({"matmul_forward", Tol::f32, [](Rng& r) { return std::vector<Tensor>{randn({37, 24}, r), randn({24, 19}, r), randn({19}, r)}; },
               [](Ctx& x, const std::vector<Tensor>&) { return std::vector<std::pair<Tensor, bool>>{{out(x, {37, 19}), false}}; },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) { ops::matmul_forward(x, {o[0], in[0], in[1], in[2]}); }});
  c.push_back({"matmul_backward", Tol::f32, [](Rng& r) { return std::vector<Tensor>{randn({37, 24}, r), randn({24, 19}, r), randn({37, 19}, r)}; },
               [](Ctx& x, const std::vector<Tensor>&) {
                 return std::vector<std::pair<Tensor, bool>>{{out(x, {37, 24}), true}, {out(x, {24, 19}), true}, {out(x, {19}), true}};
               },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) {
                 ops::matmul_backward(x, {&o[0], &o[1], &o[2], in[2], in[0], in[1]});
               }});
  c.push_back({"layernorm_forward", Tol::f32, [](Rng& r) { return std::vector<Tensor>{randn({33, 48}, r, 3.f), randn({48}, r), randn({48}, r)}; },
               [](Ctx& x, const std::vector<Tensor>&) {
                 return std::vector<std::pair<Tensor, bool>>{{out(x, {33, 48}), false}, {out(x, {33}), false}, {out(x, {33}), false}};
               },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) { ops::layernorm_forward(x, {o[0], o[1], o[2], in[0], in[1], in[2]}); }});
  // The model options (model.position, norm, activation, tie_embeddings).
  c.push_back({"matmul_transposed_w", Tol::f32, [](Rng& r) { return std::vector<Tensor>{randn({37, 24}, r), randn({19, 24}, r), randn({37, 19}, r)}; },
               [](Ctx& x, const std::vector<Tensor>&) {
                 return std::vector<std::pair<Tensor, bool>>{{out(x, {37, 19}), false}, {out(x, {37, 24}), true}, {out(x, {19, 24}), true}};
               },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) {
                 ops::matmul_forward(x, {o[0], in[0], in[1], Tensor(), false, true});
                 ops::matmul_backward(x, {&o[1], &o[2], nullptr, in[2], in[0], in[1], true});
               }});
  c.push_back({"rmsnorm", Tol::f32, [](Rng& r) { return std::vector<Tensor>{randn({33, 48}, r, 3.f), randn({48}, r), randn({33, 48}, r)}; },
               [](Ctx& x, const std::vector<Tensor>&) {
                 return std::vector<std::pair<Tensor, bool>>{{out(x, {33, 48}), false}, {out(x, {33}), false},
                                                             {out(x, {33, 48}), true}, {out(x, {48}), true}};
               },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) {
                 ops::rmsnorm_forward(x, {o[0], o[1], in[0], in[1]});
                 ops::rmsnorm_backward(x, {o[2], o[3], in[2], in[0], in[1], o[1]});
               }});
  c.push_back({"swiglu", Tol::f32, [](Rng& r) { return std::vector<Tensor>{randn({29, 2 * 37}, r, 3.f), randn({29, 37}, r)}; },
               [](Ctx& x, const std::vector<Tensor>&) {
                 return std::vector<std::pair<Tensor, bool>>{{out(x, {29, 37}), false}, {out(x, {29, 2 * 37}), true}};
               },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) {
                 ops::swiglu_forward(x, {o[0], in[0]});
                 ops::swiglu_backward(x, {o[1], in[1], in[0]});
               }});
  // In place: the outputs start as copies of a packed qkv (rows at positions
  // up to 40000, where fp32 angles would be off by ~1e-3 rad) and of dy.
  c.push_back({"rope", Tol::f32,
               [](Rng& r) { return std::vector<Tensor>{randn({21, 3 * 24}, r), ints({21}, r, 40000), randn({21, 3 * 24}, r)}; },
               [](Ctx& x, const std::vector<Tensor>&) {
                 return std::vector<std::pair<Tensor, bool>>{{out(x, {21, 3 * 24}), false}, {out(x, {21, 3 * 24}), false}};
               },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) {
                 o[0].copy_from(in[0], x);
                 ops::rope_forward(x, {o[0], in[1], 0, 8, 6, 10000.0});
                 o[1].copy_from(in[2], x);
                 ops::rope_backward(x, {o[1], in[1], 0, 8, 6, 10000.0});
               }});
  c.push_back({"expert_ffn_swiglu_no_bias", Tol::f32,
               [](Rng& r) { return std::vector<Tensor>{randn({23, 16}, r), randn({3, 16, 2 * 12}, r, 0.3f), randn({3, 12, 16}, r, 0.3f), randn({23, 16}, r)}; },
               [](Ctx& x, const std::vector<Tensor>&) {
                 return std::vector<std::pair<Tensor, bool>>{{out(x, {23, 16}), false}, {out(x, {23, 24}), false},
                                                             {out(x, {23, 16}), true}, {out(x, {3, 16, 24}), true},
                                                             {out(x, {3, 12, 16}), true}};
               },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) {
                 const std::vector<int32_t> offset = {0, 9, 9, 23};
                 const Tensor none;
                 Tensor no_db1, no_db2;
                 ops::expert_ffn_forward(x, {o[0], o[1], in[0], offset, {in[1], none, in[2], none}, ops::FfnActivation::swiglu});
                 ops::expert_ffn_backward(x, {o[2], {o[3], no_db1, o[4], no_db2}, in[3], in[0], o[1], offset,
                                              {in[1], none, in[2], none}, ops::FfnActivation::swiglu});
               }});
  c.push_back({"gelu_forward", Tol::f32, [](Rng& r) { return std::vector<Tensor>{randn({1001}, r, 3.f)}; },
               [](Ctx& x, const std::vector<Tensor>&) { return std::vector<std::pair<Tensor, bool>>{{out(x, {1001}), false}}; },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) { ops::gelu_forward(x, o[0], in[0]); }});
  c.push_back({"gelu_backward", Tol::f32, [](Rng& r) { return std::vector<Tensor>{randn({1001}, r, 3.f), randn({1001}, r)}; },
               [](Ctx& x, const std::vector<Tensor>&) { return std::vector<std::pair<Tensor, bool>>{{out(x, {1001}), true}}; },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) { ops::gelu_backward(x, o[0], in[1], in[0]); }});
  c.push_back({"embedding_forward", Tol::exact, [](Rng& r) { return std::vector<Tensor>{ints({24}, r, 50), randn({50, 16}, r), randn({8, 16}, r)}; },
               [](Ctx& x, const std::vector<Tensor>&) { return std::vector<std::pair<Tensor, bool>>{{out(x, {24, 16}), false}}; },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) { ops::embedding_forward(x, {o[0], in[0], in[1], in[2], 8}); }});
  c.push_back({"cross_entropy", Tol::f32, [](Rng& r) { return std::vector<Tensor>{randn({21, 67}, r, 2.f), ints({21}, r, 67)}; },
               [](Ctx& x, const std::vector<Tensor>&) {
                 return std::vector<std::pair<Tensor, bool>>{{out(x, {21, 67}), false}, {out(x, {21, 67}), false}};
               },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) {
                 ops::cross_entropy_forward(x, {o[0], in[0], in[1]});
                 ops::cross_entropy_backward(x, {o[1], o[0], in[1]});
               }});
  c.push_back({"attention", Tol::f32, [](Rng& r) { return std::vector<Tensor>{randn({2, 13, 48}, r), randn({2, 13, 16}, r)}; },
               [](Ctx& x, const std::vector<Tensor>&) {
                 return std::vector<std::pair<Tensor, bool>>{{out(x, {2, 13, 16}), false}, {out(x, {2, 4, 13, 13}), false},
                                                             {out(x, {2, 13, 48}), true}};
               },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) {
                 const ops::AttentionShape s{2, 13, 16, 4};
                 ops::attention_forward(x, {o[0], o[1], in[0], s});
                 ops::attention_backward(x, {o[2], in[1], in[0], o[1], s});
               }});
  c.push_back({"router_scores_and_tokens_choose", Tol::exact,
               [](Rng& r) { return std::vector<Tensor>{randn({40, 8}, r, 2.f)}; },
               [](Ctx& x, const std::vector<Tensor>&) {
                 return std::vector<std::pair<Tensor, bool>>{{out(x, {40, 8}), false}, {out(x, {80}, DType::i32), false},
                                                             {out(x, {80}, DType::i32), false}};
               },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) {
                 ops::router_scores(x, o[0], in[0], ops::ScoreFn::softmax);
                 ops::Route route;
                 ops::TokensChooseParams p;
                 p.k = 2;
                 p.capacity_factor = 1.0f;
                 ops::tokens_choose(x, route, o[0], p);
                 o[1].copy_from(route.group, x);
                 o[2].copy_from(route.slot, x);
               }});
  c.push_back({"dispatch_combine", Tol::f32, [](Rng& r) { return std::vector<Tensor>{randn({30, 4}, r, 2.f), randn({30, 12}, r)}; },
               [](Ctx& x, const std::vector<Tensor>&) { return std::vector<std::pair<Tensor, bool>>{{out(x, {30, 12}), false}}; },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) {
                 Tensor probs = out(x, {30, 4});
                 ops::router_scores(x, probs, in[0], ops::ScoreFn::softmax);
                 ops::Route route;
                 ops::TokensChooseParams p;
                 p.k = 2;
                 ops::tokens_choose(x, route, probs, p);
                 Tensor buf = out(x, {route.rows(), 12});
                 ops::dispatch_forward(x, buf, in[1], route);
                 ops::combine_forward(x, o[0], buf, route);
               }});
  c.push_back({"random_uniform_bits", Tol::exact, [](Rng&) { return std::vector<Tensor>{}; },
               [](Ctx& x, const std::vector<Tensor>&) { return std::vector<std::pair<Tensor, bool>>{{out(x, {4099}), false}}; },
               [](Ctx& x, const std::vector<Tensor>&, std::vector<Tensor>& o) {
                 ops::random_uniform(x, o[0], RandomKey{17, random_stream(RandomPurpose::jitter, 1), 3, 1000}, 0.f, 1.f);
               }});
  c.push_back({"gather_rows", Tol::exact, [](Rng& r) {
                 Tensor idx = Tensor::empty({9}, DType::i64, host_ctx());
                 for (int i = 0; i < 9; ++i) idx.data<int64_t>()[i] = (i * 4) % 9;
                 return std::vector<Tensor>{randn({9, 5}, r), idx};
               },
               [](Ctx& x, const std::vector<Tensor>&) { return std::vector<std::pair<Tensor, bool>>{{out(x, {9, 5}), false}}; },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) { ops::gather_rows(x, o[0], in[0], in[1]); }});
  c.push_back({"split_heads", Tol::exact, [](Rng& r) { return std::vector<Tensor>{randn({10, 24}, r)}; },
               [](Ctx& x, const std::vector<Tensor>&) { return std::vector<std::pair<Tensor, bool>>{{out(x, {2, 10, 4}), false}}; },
               [](Ctx& x, const std::vector<Tensor>& in, std::vector<Tensor>& o) { ops::split_heads(x, o[0], in[0], 8); }});
  return c;
}

// Relative L2 error of got against want (host tensors), and the worst element.
double rel_l2(const Tensor& got, const Tensor& want) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double d = static_cast<double>(got.f32()[i]) - want.f32()[i];
    num += d * d;
    den += static_cast<double>(want.f32()[i]) * want.f32()[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Runs a case on ctx; returns its outputs on the host.
std::vector<Tensor> run_case(const OpCase& c, Ctx& ctx, const std::vector<Tensor>& host_inputs) {
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

TEST_P(BackendOps, EveryOpAgreesWithTheCpuAndReruns) {
  for (const OpCase& c : cases()) {
    SCOPED_TRACE(c.name);
    Rng rng(0x5eed + c.name.size());
    const std::vector<Tensor> inputs = c.inputs(rng);
    const std::vector<Tensor> first = run_case(c, ctx(), inputs);
    const std::vector<Tensor> second = run_case(c, ctx(), inputs);
    const std::vector<Tensor> ref = run_case(c, host_ctx(), inputs);
    for (size_t i = 0; i < first.size(); ++i) {
      EXPECT_TRUE(bitwise_equal(first[i], second[i])) << "output " << i << " differs between two runs";
      if (first[i].dtype() == DType::f32)
        for (int64_t e = 0; e < first[i].numel(); ++e)
          ASSERT_FALSE(std::isnan(first[i].f32()[e])) << "output " << i << " element " << e << " was never written";
      if (c.tol == Tol::exact || first[i].dtype() != DType::f32)
        EXPECT_TRUE(bitwise_equal(first[i], ref[i])) << "output " << i << " differs from the CPU reference";
      else
        EXPECT_LE(rel_l2(first[i], ref[i]), 1e-5) << "output " << i << " against the CPU reference";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendOps, ::testing::Values(DeviceKind::cpu, DeviceKind::cuda),
                         [](const ::testing::TestParamInfo<DeviceKind>& p) {
                           return std::string(p.param == DeviceKind::cpu ? "cpu" : "cuda");
                         });

}  // namespace
}  // namespace sy
