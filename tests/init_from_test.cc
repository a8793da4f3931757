// A new run from another run's weights (runtime/checkpoint.h,
// init_from_checkpoint; train_switch --init-from): sparse upcycling keeps a
// dense model's function (each expert its layer's FFN, top-2 renormalised,
// dropless, no noise: the same validation loss), copies the FFNs bit for bit
// and leaves the routers at their init; the same model loads its weights
// without the optimizer; nothing else carries over but the data position,
// and the origin is recorded through resumes. Refusals leave the model as it
// was.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "config_error.h"
#include "temp_dir.h"
#include "core/device.h"
#include "runtime/checkpoint.h"
#include "runtime/checkpoint_store.h"
#include "runtime/trainer.h"

namespace sy {
namespace {

namespace fs = std::filesystem;
using testing::error_of;
using testing::TempDir;

using Sets = std::vector<std::string>;

// A small dense model, or the same with MoE FFNs whose output is the FFN's
// when every expert is that FFN: top-2 weights renormalised to sum to one,
// nothing dropped, no noise in the choice. `sets` are --set overrides.
Config make_config(const std::string& root, bool moe, const Sets& sets = {}) {
  Config c = parse_config(std::string(R"(
    model { d_model: 16 n_layers: 2 n_heads: 2 ffn_hidden: 24 seq_len: 16 }
    train { batch: 4 steps: 6 warmup_steps: 1 eval_batches: 2 seed: 5 lr: 0.01 }
    data { synthetic_bytes: 10000 }
  )") + (moe ? "moe { num_experts: 4 top_k: 2 renormalize: true dropless: true every_n_layers: 1 "
                "router_noise: 0 jitter: 0 }"
             : ""),
                          "test");
  for (const std::string& o : sets) apply_override(c, o);
  c.mutable_train()->set_checkpoint_dir(root);
  validate_config(c, "test");
  return c;
}
Config dense_config(const std::string& root, const Sets& sets = {}) { return make_config(root, false, sets); }
Config moe_config(const std::string& root, const Sets& sets = {}) { return make_config(root, true, sets); }

// The dense run's checkpoint after 3 steps (weights and biases trained away
// from their init).
std::string dense_checkpoint(const Config& cfg, float* val_loss = nullptr) {
  Trainer a(cfg, {});
  for (int s = 1; s <= 3; ++s) a.step(s);
  if (val_loss) *val_loss = a.evaluate();
  return a.write_checkpoint();
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

Param* find(Transformer& m, const std::string& name) {
  for (Param* p : m.params().all())
    if (p->name == name) return p;
  return nullptr;
}
Param* param(Transformer& m, const std::string& name) {
  Param* p = find(m, name);
  if (!p) ADD_FAILURE() << "no parameter " << name;
  return p;
}

// A refusal's message, and the model as it was.
std::string refusal(Trainer& t, const std::string& dir) {
  std::string before;
  for (Param* p : t.model().params().all()) before.append(static_cast<const char*>(p->value.raw()), p->value.nbytes());
  std::string what;
  try {
    t.init_from(dir);
    ADD_FAILURE() << "init_from did not refuse";
  } catch (const AgreedError& e) {
    what = e.what();
  }
  std::string after;
  for (Param* p : t.model().params().all()) after.append(static_cast<const char*>(p->value.raw()), p->value.nbytes());
  EXPECT_TRUE(before == after) << "a refusal changed the model";
  EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  return what;
}

// Upcycling keeps the dense model's function: the same validation loss to
// rounding (w a + (1 - w) a is a up to an ulp or two). A MoE from its own init
// is far from it, so the comparison can fail.
// `model_sets` apply to both models, `moe_sets` to the MoE only.
void expect_dense_function(const Sets& model_sets, const Sets& moe_sets = {}) {
  TempDir d, e;
  float dense_loss = 0;
  const std::string dir = dense_checkpoint(dense_config(d.path, model_sets), &dense_loss);
  Sets sets = model_sets;
  sets.insert(sets.end(), moe_sets.begin(), moe_sets.end());
  Trainer fresh(moe_config(e.path, sets), {});
  const float fresh_loss = fresh.evaluate();
  Trainer b(moe_config(e.path, sets), {});
  b.init_from(dir);
  const float upcycled = b.evaluate();
  EXPECT_NEAR(upcycled, dense_loss, 1e-5 * dense_loss) << "the upcycled model computes the dense one";
  EXPECT_GT(std::fabs(fresh_loss - dense_loss), 1e-2) << "a fresh MoE does not (the test can fail)";
}

TEST(Upcycle, KeepsTheDenseFunction) { expect_dense_function({}); }

// Every other layer routed: the dense layers load as they are.
TEST(Upcycle, KeepsTheDenseFunctionWithDenseLayersBetween) { expect_dense_function({}, {"moe.every_n_layers=2"}); }

// The Mixtral layout: SwiGLU's gate|up halves in fc1 and w1 alike, no
// biases, RMSNorm, RoPE.
TEST(Upcycle, KeepsTheDenseFunctionInTheLlamaLayout) {
  expect_dense_function({"model.activation=SWIGLU", "model.bias=false", "model.norm=RMSNORM", "model.position=ROPE"});
}

// Routed attention's centroids come with the weights (calibrated: no
// k-means again), and depth routing's router is a dense weight.
TEST(Upcycle, KeepsTheDenseFunctionWithRoutedAttentionAndDepth) {
  expect_dense_function({"attention.kind=ROUTED", "attention.num_routing_heads=1", "attention.window=4",
                         "depth.every_n_layers=2", "depth.capacity=0.5"});
}

// bf16 GEMMs read the weights' bf16 shadows: written again from the copies
// (stale ones, the MoE init's, would compute another function).
TEST(Upcycle, KeepsTheDenseFunctionInBf16) { expect_dense_function({"precision=BF16"}); }

// Tied embeddings (no head.w) and dense first layers.
TEST(Upcycle, KeepsTheDenseFunctionWithTiedEmbeddingsAndDenseFirstLayers) {
  expect_dense_function({"model.tie_embeddings=true", "model.n_layers=3"}, {"moe.first_dense_layers=1"});
}

TEST(Upcycle, CopiesTheFfnsAndNothingOfTheOptimizer) {
  TempDir d, e;
  const Config dense = dense_config(d.path), moe = moe_config(e.path);
  Trainer a(dense, {});
  for (int s = 1; s <= 3; ++s) a.step(s);
  const std::string dir = a.write_checkpoint();
  Trainer fresh(moe, {}), b(moe, {});
  b.init_from(dir);
  Transformer &src = a.model(), &dst = b.model();
  const char* pairs[][2] = {{"w1", "fc1.w"}, {"b1", "fc1.b"}, {"w2", "fc2.w"}, {"b2", "fc2.b"}};
  for (int l = 0; l < 2; ++l) {
    const std::string h = "h" + std::to_string(l);
    for (const auto& [expert, fc] : pairs) {
      Param* p = param(dst, h + ".moe.experts." + expert);
      const Tensor& want = param(src, h + ".mlp." + fc)->value;
      for (int64_t g = 0; g < p->local_rows(); ++g)
        EXPECT_TRUE(same_bytes(p->local_row(p->value, g), want)) << h << " expert " << g << " " << expert;
    }
    EXPECT_TRUE(same_bytes(param(dst, h + ".moe.router.w")->value, param(fresh.model(), h + ".moe.router.w")->value))
        << "the router keeps this model's init";
  }
  for (const char* name : {"wte", "wpe", "h1.attn.qkv.w", "h0.ln2.b", "head.w"})
    EXPECT_TRUE(same_bytes(param(dst, name)->value, param(src, name)->value)) << name;
  for (Param* p : dst.params().all()) {
    const Tensor zero = Tensor::zeros(p->m.shape(), DType::f32, host_ctx());
    EXPECT_TRUE(same_bytes(p->m, zero) && same_bytes(p->v, zero)) << p->name << ": AdamW's moments start at zero";
  }
  EXPECT_EQ(b.completed_steps(), 0);
  EXPECT_EQ(b.origin().checkpoint, dir);
  EXPECT_EQ(b.origin().step, 3);
  EXPECT_TRUE(b.origin().upcycled);

  // The data stream goes on (batch 4 after the source's 3), the counters
  // start at 0, and the origin is in every checkpoint, also after a resume.
  b.step(1);
  const std::string mine = b.write_checkpoint();
  const auto m = read_manifest(mine);
  EXPECT_EQ(m.step(), 1);
  EXPECT_EQ(m.optimizer_step(), 1);
  EXPECT_EQ(m.tokens_seen(), 4 * 16);
  EXPECT_EQ(m.data_position(), 4u);
  EXPECT_EQ(m.origin().checkpoint(), dir);
  EXPECT_EQ(m.origin().step(), 3);
  EXPECT_TRUE(m.origin().upcycled());
  Trainer c(moe, {});
  c.restore(mine);
  EXPECT_EQ(c.origin().checkpoint, dir);
  EXPECT_TRUE(c.origin().upcycled);
  // The source's batch 4 is the upcycled run's step 1 batch: the dense run's
  // step 4 and the upcycled step see the same tokens, so with the function
  // kept their losses agree too.
  TempDir f;
  Trainer g(moe_config(f.path), {});
  g.init_from(dir);
  const float upcycled = g.step(1).loss, dense_next = a.step(4).loss;
  EXPECT_NEAR(upcycled, dense_next, 1e-5 * dense_next);
}

// Drop-Upcycling (train.upcycle_reinit r): each expert re-draws round(r H)
// hidden units, its own set (and another in each layer), from the dense
// matrices' statistics: those w1 columns (gate and up for SwiGLU) and w2 rows
// differ from the FFN's, their b1 entries (both halves) are 0, every other
// value is the FFN's bit for bit; the draws repeat exactly. The dense weights
// get distinct statistics first (gate half x3 + 0.3, up half x10 - 0.2, fc2
// x25 + 2, fc1.b 0.5 + b), so the re-drawn values' mean and spread say which
// matrix they were drawn like; w1's and w2's standardised draws must not
// coincide (one range of the generator each).
struct Moments {
  double s = 0, s2 = 0;
  int64_t n = 0;
  void add(double v) { s += v, s2 += v * v, ++n; }
  double mean() const { return s / n; }
  double sd() const { return std::sqrt(std::max(0.0, s2 / n - mean() * mean())); }
};

void expect_drop_upcycle(const Sets& model_sets, int64_t halves) {
  TempDir d, e;
  const int64_t H = 24, C = 16, P = halves * H;
  Trainer a(dense_config(d.path, model_sets), {});
  for (int s = 1; s <= 3; ++s) a.step(s);
  const bool bias = find(a.model(), "h1.mlp.fc1.b") != nullptr;
  for (int l = 0; l < 2; ++l) {
    const std::string h = "h" + std::to_string(l);
    float* f1 = param(a.model(), h + ".mlp.fc1.w")->value.data<float>();
    for (int64_t k = 0; k < C * P; ++k) f1[k] = k % P < H ? 3 * f1[k] + 0.3f : 10 * f1[k] - 0.2f;
    float* f2 = param(a.model(), h + ".mlp.fc2.w")->value.data<float>();
    for (int64_t k = 0; k < H * C; ++k) f2[k] = 25 * f2[k] + 2.f;
    if (bias)
      for (int64_t k = 0; k < P; ++k) param(a.model(), h + ".mlp.fc1.b")->value.data<float>()[k] += 0.5f;
  }
  const std::string dir = a.write_checkpoint();
  Sets sets = model_sets;
  sets.push_back("train.upcycle_reinit=0.5");
  Trainer b(moe_config(e.path, sets), {}), again(moe_config(e.path, sets), {});
  b.init_from(dir);
  again.init_from(dir);
  std::vector<std::vector<bool>> unit_sets[2];
  for (int l = 0; l < 2; ++l) {
    const std::string h = "h" + std::to_string(l);
    const float* f1 = param(a.model(), h + ".mlp.fc1.w")->value.data<float>();
    const float* f2 = param(a.model(), h + ".mlp.fc2.w")->value.data<float>();
    Moments dense1[2], dense2;
    for (int64_t k = 0; k < C * P; ++k) dense1[k % P / H].add(f1[k]);
    for (int64_t k = 0; k < H * C; ++k) dense2.add(f2[k]);
    Param *w1 = param(b.model(), h + ".moe.experts.w1"), *w2 = param(b.model(), h + ".moe.experts.w2");
    for (int64_t g = 0; g < 4; ++g) {
      SCOPED_TRACE(h + " expert " + std::to_string(g));
      const Tensor r1 = w1->local_row(w1->value, g), r2 = w2->local_row(w2->value, g);
      const float *v1 = r1.data<float>(), *v2 = r2.data<float>();
      std::vector<bool> redrawn(H);
      Moments got1[2], got2;
      for (int64_t j = 0; j < H; ++j) {
        int64_t diff = 0;
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t half = 0; half < halves; ++half) diff += v1[c * P + half * H + j] != f1[c * P + half * H + j];
          diff += v2[j * C + c] != f2[j * C + c];
        }
        ASSERT_TRUE(diff == 0 || diff == C * (halves + 1))
            << "unit " << j << ": " << diff << " values differ: all of a unit's or none";
        redrawn[j] = diff > 0;
        if (!redrawn[j]) continue;
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t half = 0; half < halves; ++half) got1[half].add(v1[c * P + half * H + j]);
          got2.add(v2[j * C + c]);
        }
      }
      EXPECT_EQ(std::count(redrawn.begin(), redrawn.end(), true), H / 2);
      // Each re-drawn part against the dense matrix (or half) it copies.
      auto like = [](const Moments& got, const Moments& want, const char* what) {
        EXPECT_NEAR(got.mean(), want.mean(), 4 * want.sd() / std::sqrt(double(got.n))) << what << " mean";
        EXPECT_NEAR(got.sd(), want.sd(), 0.2 * want.sd()) << what << " spread";
      };
      for (int64_t half = 0; half < halves; ++half) like(got1[half], dense1[half], half ? "w1 up half" : "w1 (gate)");
      like(got2, dense2, "w2");
      // The draws of w1 and w2, standardised by the statistics they were
      // drawn with (the dense matrices'): no shared stretch of the generator.
      auto z = [](float v, const Moments& m) { return (v - float(m.mean())) / double(float(m.sd())); };
      std::vector<double> z1;
      for (int64_t j = 0; j < H; ++j)
        if (redrawn[j])
          for (int64_t c = 0; c < C; ++c)
            for (int64_t half = 0; half < halves; ++half) z1.push_back(z(v1[c * P + half * H + j], dense1[half]));
      std::sort(z1.begin(), z1.end());
      int64_t shared = 0;
      for (int64_t j = 0; j < H; ++j)
        if (redrawn[j])
          for (int64_t c = 0; c < C; ++c) {
            const double z2 = z(v2[j * C + c], dense2);
            const auto it = std::lower_bound(z1.begin(), z1.end(), z2 - 2e-5);
            shared += it != z1.end() && *it < z2 + 2e-5;
          }
      EXPECT_LE(shared, 5) << "w2's draws repeat w1's";
      if (bias) {
        Param* b1 = param(b.model(), h + ".moe.experts.b1");
        const Tensor rb = b1->local_row(b1->value, g);
        const float* fb = param(a.model(), h + ".mlp.fc1.b")->value.data<float>();
        for (int64_t k = 0; k < P; ++k) EXPECT_EQ(rb.data<float>()[k], redrawn[k % H] ? 0.f : fb[k]) << "b1 " << k;
      }
      unit_sets[l].push_back(redrawn);
    }
    EXPECT_NE(unit_sets[l][0], unit_sets[l][1]) << "each expert its own units";
    EXPECT_NE(unit_sets[l][2], unit_sets[l][3]);
  }
  for (int64_t g = 0; g < 4; ++g) EXPECT_NE(unit_sets[0][g], unit_sets[1][g]) << "each layer its own, expert " << g;
  for (Param* p : b.model().params().all())
    EXPECT_TRUE(same_bytes(p->value, param(again.model(), p->name)->value)) << p->name << ": the draws repeat";
}

TEST(Upcycle, DropUpcyclingRedrawsHalfOfEachExpertsUnits) { expect_drop_upcycle({}, 1); }
TEST(Upcycle, DropUpcyclingRedrawsGateAndUpTogether) { expect_drop_upcycle({"model.activation=SWIGLU"}, 2); }
TEST(Upcycle, DropUpcyclingWithoutBiases) {
  expect_drop_upcycle({"model.activation=SWIGLU", "model.bias=false"}, 2);
}

TEST(Upcycle, DropUpcyclingOnlyWhenUpcycling) {
  TempDir d, e;
  const std::string dir = dense_checkpoint(dense_config(d.path));
  Trainer t(dense_config(e.path, {"train.upcycle_reinit=0.25"}), {});
  EXPECT_EQ(refusal(t, dir), "train.upcycle_reinit = 0.25: re-draws part of each expert when upcycling a dense "
                             "checkpoint, and " + dir + " is not one for this model (must be 0)");
  Trainer few(moe_config(e.path, {"train.upcycle_reinit=0.02"}), {});  // 0.02 x 24 rounds to no unit
  EXPECT_EQ(refusal(few, dir), "train.upcycle_reinit = 0.02: re-draws round(r x model.ffn_hidden = 24) = 0 hidden "
                               "units of each expert (must be 0, or at least 0.0208333)");
}

// On a GPU: the copies (and Drop-Upcycling's round trip through the host)
// land in the device's arenas and bf16 shadows; the upcycled model's
// validation loss is the CPU one's (fp32: 1e-4 relative for a whole model's
// loss; a stale or missing copy moves it by ~1e-2). One head of 16: dense
// attention on CUDA has head sizes 16, 32, 64 and 128 (the config's 2
// heads of 8 are refused there).
TEST(UpcycleCuda, MatchesTheCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no GPU visible (or built without CUDA): the GPU path is not tested here";
  TempDir d, e, f;
  const std::string dir = dense_checkpoint(dense_config(d.path, {"model.n_heads=1"}));
  for (Sets extra : {Sets{}, Sets{"train.upcycle_reinit=0.5"}}) {
    SCOPED_TRACE(extra.empty() ? "copies" : extra[0]);
    extra.push_back("model.n_heads=1");
    Trainer cpu(moe_config(e.path, extra), {});
    cpu.init_from(dir);
    Sets on_gpu = extra;
    on_gpu.push_back("backend=CUDA");
    Trainer gpu(moe_config(f.path, on_gpu), {});
    ASSERT_TRUE(gpu.device() != nullptr);
    gpu.init_from(dir);
    const float want = cpu.evaluate(), got = gpu.evaluate();
    EXPECT_NEAR(got, want, 1e-4 * want);
  }
}

// The same model: weights (and centroids, biases) as a resume loads them,
// but not AdamW's moments, the step or the schedule.
TEST(InitFrom, SameModelTakesTheWeightsOnly) {
  TempDir d, e;
  const Sets sets = {"attention.kind=ROUTED", "attention.num_routing_heads=1", "attention.window=4",
                     "moe.bias_balance_rate=0.01"};
  Trainer a(moe_config(d.path, sets), {});
  for (int s = 1; s <= 3; ++s) a.step(s);
  const std::string dir = a.write_checkpoint();
  Trainer b(moe_config(e.path, sets), {});
  b.init_from(dir);
  for (Param* p : b.model().params().all()) {
    EXPECT_TRUE(same_bytes(p->value, param(a.model(), p->name)->value)) << p->name;
    EXPECT_TRUE(same_bytes(p->m, Tensor::zeros(p->m.shape(), DType::f32, host_ctx()))) << p->name;
  }
  const auto ba = a.model().balance_biases(), bb = b.model().balance_biases();
  ASSERT_EQ(ba.size(), 2u);
  for (size_t i = 0; i < ba.size(); ++i) EXPECT_TRUE(same_bytes(ba[i].second, bb[i].second)) << ba[i].first;
  EXPECT_FALSE(b.origin().upcycled);
  EXPECT_EQ(b.completed_steps(), 0);
  EXPECT_EQ(b.evaluate(), a.evaluate());
}

// A new run whose routing would compute another function from the same
// weights is told which settings moved (not refused: it may be the point).
TEST(InitFrom, SaysWhichRoutingSettingsMoved) {
  TempDir d, e;
  const Config a = moe_config(d.path);
  EXPECT_EQ(routing_changes(a, a), "");
  const Config b = moe_config(e.path, {"moe.top_k=1", "moe.renormalize=false", "moe.dropless=false"});
  EXPECT_EQ(routing_changes(a, b),
            "moe.top_k 1 (the source's 2), moe.renormalize false (the source's true), moe.dropless false (the "
            "source's true)");
  EXPECT_EQ(routing_changes(dense_config(d.path), b), "");  // (upcycling: no routing to keep)
  const Config c = moe_config(e.path, {"moe.top_k=1", "moe.renormalize=false", "moe.dropless=false",
                                       "moe.capacity_factor_eval=1.5"});
  EXPECT_EQ(routing_changes(b, c), "moe.capacity_factor_eval 1.5 (the source's 2)");
  Config ec = moe_config(e.path, {"moe.router=EXPERT_CHOICE", "moe.top_k=1", "moe.renormalize=false",
                                  "moe.dropless=false", "moe.capacity_factor=2"});
  Config ec2 = ec;
  ec2.mutable_moe()->set_capacity_factor(1.f);
  EXPECT_EQ(routing_changes(ec, ec2), "moe.capacity_factor 1 (the source's 2)");
  Trainer ta(a, {});
  ta.step(1);
  const std::string dir = ta.write_checkpoint();
  Trainer tb(b, {});
  ::testing::internal::CaptureStderr();
  tb.init_from(dir);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("note: --init-from " + dir + ": moe.top_k 1 (the source's 2)"), std::string::npos) << err;
}

// With rotary positions and dense attention no parameter depends on the
// window: a new run may take another (a longer context to fine-tune at);
// with a position table it may not, nor may a resumed run.
TEST(InitFrom, AnotherWindowWhereNoParameterDependsOnIt) {
  TempDir d, e;
  const std::string dir = dense_checkpoint(dense_config(d.path, {"model.position=ROPE"}));
  Trainer longer(dense_config(e.path, {"model.position=ROPE", "model.seq_len=32"}), {});
  longer.init_from(dir);
  for (Param* p : longer.model().params().all()) EXPECT_FALSE(p->name == "wpe") << "a position table";
  EXPECT_TRUE(std::isfinite(longer.step(1).loss));
  TempDir f;
  const std::string learned = dense_checkpoint(dense_config(f.path));
  Trainer table(dense_config(e.path, {"model.seq_len=32"}), {});
  EXPECT_NE(refusal(table, learned).find("model.seq_len = 32 in this run, 16 in the checkpoint (learned positions: "),
            std::string::npos);
  Trainer routed(dense_config(e.path, {"model.position=ROPE", "model.seq_len=32", "attention.kind=ROUTED",
                                       "attention.num_routing_heads=1", "attention.window=4"}),
                 {});
  TempDir g;
  const std::string routed_dir = dense_checkpoint(dense_config(g.path, {"model.position=ROPE", "attention.kind=ROUTED",
                                                                         "attention.num_routing_heads=1",
                                                                         "attention.window=4"}));
  EXPECT_NE(refusal(routed, routed_dir).find("model.seq_len = 32 in this run, 16 in the checkpoint (sparse attention"),
            std::string::npos);
}

TEST(Upcycle, RefusesWhatACopyCannotBe) {
  TempDir d, e;
  const std::string dir = dense_checkpoint(dense_config(d.path));
  {
    Trainer t(moe_config(e.path, {"moe.shared_expert=true"}), {});
    EXPECT_EQ(refusal(t, dir).rfind("moe.shared_expert = true: upcycling " + dir, 0), 0u);
  }
  {
    Trainer t(moe_config(e.path, {"moe.expert_hidden=12"}), {});
    EXPECT_EQ(refusal(t, dir), "moe.expert_hidden = [12, 12, 12, 12]: upcycling " + dir +
                                   " copies each layer's dense FFN (model.ffn_hidden = 24) into every expert, so each "
                                   "must be that wide (empty or 0)");
  }
  {
    Trainer t(moe_config(e.path, {"model.n_heads=4"}), {});
    EXPECT_EQ(refusal(t, dir), join_path(dir, "manifest.pbtxt") +
                                   ": model.n_heads = 4 in this run, 2 in the checkpoint: a dense checkpoint upcycles "
                                   "only into a model that is the same outside its MoE layers");
  }
  {  // a MoE checkpoint into another MoE: not upcycling, and not the same model
    TempDir f;
    const std::string moe_dir = dense_checkpoint(moe_config(f.path));
    Trainer t(moe_config(e.path, {"moe.num_experts=8"}), {});
    EXPECT_EQ(refusal(t, moe_dir).rfind(join_path(moe_dir, "manifest.pbtxt") +
                                            ": moe.num_experts = 8 in this run, 4 in the checkpoint: --init-from "
                                            "takes the same model's weights, or a dense checkpoint's",
                                        0),
              0u);
    Trainer dense(dense_config(e.path), {});  // nor a MoE's into a dense model
    EXPECT_NE(refusal(dense, moe_dir).find("moe.num_experts = 0 in this run, 4 in the checkpoint"), std::string::npos);
  }
}

// The source must not be among the checkpoints the new run writes and prunes.
TEST(InitFrom, SourceOutsideTheRunsCheckpointDirectory) {
  TempDir d, e;
  const std::string dir = dense_checkpoint(dense_config(d.path));
  const std::string error = error_of([&] { check_init_source(dir, d.path); });
  EXPECT_EQ(error, "train.checkpoint_dir = " + d.path + ": the --init-from checkpoint " + dir +
                       " lies there, and this run's checkpoints would replace or prune it (give the new run "
                       "another directory)");
  EXPECT_FALSE(error_of([&] { check_init_source(dir + "/", d.path + "/."); }).empty()) << "spelt otherwise";
  EXPECT_NO_THROW(check_init_source(dir, e.path));
}

}  // namespace
}  // namespace sy
