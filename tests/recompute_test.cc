// Activation recomputation (train.recompute, runtime/model.h's Block): the
// repeated forward computes what one pass saved, bit for bit, so losses,
// router losses and every gradient equal the run without it, over steps
// whose routing state moves between them (the balancing bias, the routed
// attention's centroids: a statistic recorded twice would move them
// differently and show at the next step); and the activations inside the
// blocks are held for one block at a time, which the allocator's high-water
// mark shows.
#include <gtest/gtest.h>

#include <cstring>

#include "core/rng.h"
#include "runtime/model.h"
#include "core/device_runtime.h"

namespace sy {
namespace {

// A small model, with `extra`'s fields set over it.
Config config(const std::string& extra, bool recompute) {
  Config c = parse_config(R"(
    model { d_model: 32 n_heads: 2 n_layers: 3 ffn_hidden: 48 seq_len: 32 init_std: 0.3 }
    train { seed: 5 batch: 4 }
  )", "test");
  c.MergeFrom(parse_config(extra, "test"));
  c.mutable_train()->set_recompute(recompute);
  validate_config(c, "test");
  return c;
}

Batch random_batch(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  Rng rng(seed);
  Batch b;
  for (int64_t i = 0; i < B * T; ++i) {
    b.inputs.push_back(static_cast<int32_t>(rng.below(V)));
    b.targets.push_back(static_cast<int32_t>(rng.below(V)));
  }
  return b;
}

struct Steps {
  std::vector<float> loss;
  std::vector<double> aux;
  std::vector<std::vector<Tensor>> grads;  // per step, in parameter order, on the host
  // Live bytes' peak over the steps, above what was live before (on the CPU
  // it includes the host copies of the gradients taken after each step).
  size_t high_water = 0;
};

// `steps` training steps of micro_batches forward + backward each, routing
// state moved after each (end_step), then an evaluation forward of the
// whole batch; no optimizer (the weights stay, so only routing state carries
// from one step to the next).
Steps run(Ctx& ctx, const Config& cfg, int steps) {
  Transformer model(ctx, cfg);
  const int64_t T = cfg.model().seq_len(), V = cfg.model().vocab_size(), B = cfg.train().batch();
  const int micros = cfg.train().micro_batches();
  ctx.alloc->reset_high_water();
  const size_t resident = ctx.alloc->bytes_in_use();  // parameters, gradients
  if (model.needs_calibration()) model.calibrate(random_batch(B, T, V, 99));
  model.set_training(true);
  Steps out;
  for (int s = 0; s < steps; ++s) {
    model.params().zero_grad(ctx);
    model.set_step(s);
    for (int m = 0; m < micros; ++m) {
      model.set_micro_batch(m, micros);
      out.loss.push_back(model.forward(random_batch(B / micros, T, V, 100 * s + m)));
      out.aux.push_back(model.aux_loss());
      model.backward();
    }
    std::vector<Tensor> g;
    for (Param* p : model.params().all()) g.push_back(p->grad.to(host_ctx()));
    out.grads.push_back(std::move(g));
    model.end_step();
  }
  model.set_training(false);
  out.loss.push_back(model.forward(random_batch(B, T, V, 7)));
  out.aux.push_back(model.aux_loss());
  out.high_water = ctx.alloc->high_water() - resident;
  return out;
}

void expect_same(const Steps& a, const Steps& b) {
  ASSERT_EQ(a.loss.size(), b.loss.size());
  for (size_t i = 0; i < a.loss.size(); ++i) {
    EXPECT_EQ(a.loss[i], b.loss[i]) << "forward " << i;
    EXPECT_EQ(a.aux[i], b.aux[i]) << "router losses, forward " << i;
  }
  for (size_t s = 0; s < a.grads.size(); ++s)
    for (size_t p = 0; p < a.grads[s].size(); ++p) {
      const Tensor &x = a.grads[s][p], &y = b.grads[s][p];
      ASSERT_EQ(x.nbytes(), y.nbytes());
      EXPECT_EQ(std::memcmp(x.raw(), y.raw(), x.nbytes()), 0) << "step " << s << ", parameter " << p;
    }
}

const std::vector<std::string>& variants() {
  static const std::vector<std::string> v = {
      "",  // GPT-2 layout, dense
      // Mixtral's layout, MoE top-2 under a capacity, Gaussian router noise,
      // jitter, the balancing bias (moved each step on the recorded load),
      // z-loss, a shared expert, two micro-batches
      "model { position: ROPE norm: RMSNORM activation: SWIGLU bias: false } "
      "moe { num_experts: 4 top_k: 2 capacity_factor: 1.0 every_n_layers: 1 router_noise: 0.5 jitter: 0.1 "
      "bias_balance_rate: 0.01 z_loss_coef: 0.001 shared_expert: true } train { micro_batches: 2 }",
      // Gumbel noise with Sinkhorn offsets over its keys, expert choice under a hard budget
      "moe { num_experts: 4 top_k: 2 every_n_layers: 2 router_noise: 1 router_noise_kind: GUMBEL sinkhorn_iters: 3 }",
      "moe { num_experts: 4 router: EXPERT_CHOICE every_n_layers: 1 budget_mode: HARD budget: 0.8 }",
      // routed attention (centroid statistics each training forward, EMA at end_step)
      "attention { kind: ROUTED num_routing_heads: 1 num_clusters: 4 window: 8 dropless: false commitment_coef: 0.1 }",
      "attention { kind: BLOCK_TOPK block_size: 8 topk_blocks: 2 }",
      // adaptive depth with its predictor and budget loss
      "depth { every_n_layers: 2 capacity: 0.5 budget_coef: 0.1 } moe { num_experts: 4 top_k: 1 dropless: true "
      "every_n_layers: 1 }",
      // bf16 (the CPU emulates its roundings): bf16 shadows, attention and pre-activations;
      // Sinkhorn-balanced selection
      "precision: BF16 model { n_heads: 1 d_model: 64 } moe { num_experts: 4 top_k: 2 every_n_layers: 2 "
      "sinkhorn_iters: 4 }",
      // hash routing: the replayed forward routes by the same token ids
      "moe { num_experts: 4 router: HASH every_n_layers: 1 load_balance_coef: 0 capacity_factor: 1.0 }",
      // grouped key/value heads in a routed layer (widened after RoPE, summed back)
      "model { n_heads: 2 n_kv_heads: 1 position: ROPE } attention { kind: ROUTED num_routing_heads: 1 "
      "num_clusters: 4 window: 8 }",
  };
  return v;
}

TEST(Recompute, SameLossesAndGradientsBitForBit) {
  for (const std::string& extra : variants()) {
    SCOPED_TRACE(extra);
    expect_same(run(host_ctx(), config(extra, false), 3), run(host_ctx(), config(extra, true), 3));
  }
}

// Some blocks only (train.recompute_blocks: the first 2 of 3): the same
// bits, and a peak between none and all of them recomputed (6 blocks, the
// first 3: the other 3 keep their activations through the forward).
TEST(Recompute, TheFirstBlocksOnly) {
  const std::string moe = variants()[1];
  Config some = config(moe, true);
  some.mutable_train()->set_recompute_blocks(2);
  expect_same(run(host_ctx(), config(moe, false), 3), run(host_ctx(), some, 3));
  auto peak = [](int recompute_blocks) {
    Config c = config("moe { num_experts: 4 top_k: 2 every_n_layers: 2 }", recompute_blocks >= 0);
    c.mutable_model()->set_n_layers(6);
    if (recompute_blocks > 0) c.mutable_train()->set_recompute_blocks(recompute_blocks);
    return run(host_ctx(), c, 1).high_water;
  };
  const size_t none = peak(-1), half = peak(3), all = peak(0);
  EXPECT_LT(half, none);
  EXPECT_LT(all, half);
}

// The activations of the blocks are what recomputation stops holding, in
// training and in evaluation: with six blocks, the peak of live bytes
// (above the parameters and gradients) over a training step and an
// evaluation forward keeps less than a fifth of what the five blocks past
// the first add to it (each block's input is still kept through the
// training forward: about a tenth here).
TEST(Recompute, HoldsOneBlocksActivationsAtATime) {
  auto peak = [](int layers, bool recompute) {
    Config c = config("moe { num_experts: 4 top_k: 2 every_n_layers: 2 }", recompute);
    c.mutable_model()->set_n_layers(layers);
    return static_cast<double>(run(host_ctx(), c, 1).high_water);
  };
  const double one = peak(1, false), six = peak(6, false), six_r = peak(6, true);
  ASSERT_GT(six, one);
  EXPECT_LT(six_r - one, 0.2 * (six - one)) << "peak bytes: 1 block " << one << ", 6 blocks " << six
                                            << ", 6 blocks recomputed " << six_r;
}

TEST(RecomputeCuda, SameLossesAndGradientsBitForBit) {
  if (!cuda_available()) GTEST_SKIP() << "no GPU visible (or built without CUDA): the GPU path is not tested here";
  std::unique_ptr<DeviceRuntime> rt = DeviceRuntime::create(0);
  for (const std::string& extra : variants()) {
    SCOPED_TRACE(extra);
    expect_same(run(rt->ctx(), config(extra, false), 2), run(rt->ctx(), config(extra, true), 2));
  }
  // The first blocks only (train.recompute_blocks), as on the CPU.
  Config some = config(variants()[1], true);
  some.mutable_train()->set_recompute_blocks(2);
  expect_same(run(rt->ctx(), config(variants()[1], false), 2), run(rt->ctx(), some, 2));
}

}  // namespace
}  // namespace sy
