// Communicator and expert exchange under mpirun (-np 2 and 4): tagged
// payloads checked for exact equality, uneven and empty sends, sub-groups,
// and MoE layers whose ranks route very different token counts.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "grad_check.h"
#include "mpi_main.h"
#include "runtime/config.h"
#include "runtime/moe_layer.h"
#include "runtime/parallel.h"
#include "runtime/sparse_self_attention.h"
#include "runtime/trainer.h"

namespace sy {
namespace {

comm::MpiCommunicator& world() {
  static comm::MpiCommunicator w(MPI_COMM_WORLD);
  w.set_timeout_s(60);
  return w;
}

// Payload element i of the block rank `src` sends to rank `dst`.
float tag(int src, int dst, int64_t i) { return static_cast<float>(src * 1000000 + dst * 10000 + i); }

TEST(Communicator, AllToAllVMovesTaggedRowsExactlyWithUnevenAndEmptyCounts) {
  auto& w = world();
  const int R = w.rank(), W = w.size();
  // Rank r sends (r + 2*d) % 3 elements to rank d: some zero, some not.
  auto count = [](int s, int d) { return static_cast<int64_t>((s + 2 * d) % 3) * 5; };
  std::vector<int64_t> sc(W), rc(W);
  std::vector<float> send;
  for (int d = 0; d < W; ++d) {
    sc[d] = count(R, d);
    rc[d] = count(d, R);
    for (int64_t i = 0; i < sc[d]; ++i) send.push_back(tag(R, d, i));
  }
  int64_t total = 0;
  for (auto c : rc) total += c;
  // 1-d tensors: a row of dim 0 is one element, so the counts are element counts.
  const Tensor send_t = Tensor::from_host(send, {static_cast<int64_t>(send.size())});
  Tensor recv_t = testing::zeros({total});
  recv_t.fill(-1.f);  // poisoned
  w.all_to_all_v(send_t, sc, recv_t, rc, Stream{}, "test");
  const std::vector<float> recv = recv_t.to_vector<float>();
  int64_t o = 0;
  for (int s = 0; s < W; ++s)
    for (int64_t i = 0; i < rc[s]; ++i) ASSERT_EQ(recv[o++], tag(s, R, i)) << "from rank " << s;
}

TEST(Communicator, AllToAllCountsAllReduceBroadcastSplit) {
  auto& w = world();
  const int R = w.rank(), W = w.size();
  std::vector<int64_t> send(2 * W), recv(2 * W, -1);
  for (int d = 0; d < W; ++d) send[2 * d] = R * 100 + d, send[2 * d + 1] = -R;
  w.all_to_all_counts(send, recv, "test");
  for (int s = 0; s < W; ++s) {
    EXPECT_EQ(recv[2 * s], s * 100 + R);
    EXPECT_EQ(recv[2 * s + 1], -s);
  }
  Tensor v = Tensor::from_host(std::vector<float>{static_cast<float>(R), 1.f});
  w.all_reduce_sum(v, Stream{}, "test");
  EXPECT_EQ(v.f32()[0], W * (W - 1) / 2.f);
  EXPECT_EQ(v.f32()[1], static_cast<float>(W));
  Tensor b = Tensor::from_host(std::vector<int64_t>{R == 0 ? 4242 : 0});
  w.broadcast(b, 0, Stream{}, "test");
  EXPECT_EQ(b.data<int64_t>()[0], 4242);
  auto even = w.split(R % 2, R);
  EXPECT_EQ(even->size(), (W + 1 - R % 2) / 2);
  EXPECT_EQ(even->world_ranks()[even->rank()], R);
  double x = even->all_reduce_sum(1.0, "test");
  EXPECT_EQ(x, even->size());
}

// A MoE layer sharded over every rank against the same layer on one rank,
// fed the gathered tokens; `skew` biases the router so that all tokens choose
// expert 0 (one rank receives everything, the others nothing). With router
// losses on, the load-balance loss (global statistics) must agree; gradients
// are compared with them off, since each rank's router-loss gradient is its
// share of the data-parallel average (scaled by N_local, not N).
// `hetero` gives the experts different hidden widths (packed parameters: each
// rank's shard is a different size and sits at Param::global_begin).
// `grouped`: the balance loss per run of n tokens (each rank's slice one
// run; reported as the mean over ranks, the one rank's mean over its runs),
// and the expected-cost budget loss (this rank's tokens, at B = 0 active on
// every rank: the mean over ranks is the one rank's).
void compare_with_single_rank(bool skew, bool router_losses, bool hetero = false, bool grouped = false) {
  auto& w = world();
  const int W = w.size();
  const int64_t C = 6, H = 5, G = 2 * W, n = 7;  // n tokens per rank
  switchyard::MoeConfig cfg;
  cfg.set_num_experts(static_cast<int32_t>(G));
  if (hetero)
    for (int64_t g = 0; g < G; ++g) cfg.add_expert_hidden(static_cast<int32_t>(2 + (3 * g) % 7));
  cfg.set_top_k(2);
  cfg.set_dropless(true);
  cfg.set_load_balance_coef(router_losses ? 0.01f : 0.f);
  cfg.set_z_loss_coef(router_losses ? 0.001f : 0.f);
  if (grouped) {
    cfg.set_load_balance_tokens(n);
    cfg.set_budget_estimator(switchyard::MoeConfig::EXPECTED);
    cfg.set_budget(0.f);
    cfg.set_budget_coef(0.1f);
  }
  auto par = ParallelContext::create(std::make_unique<comm::MpiCommunicator>(MPI_COMM_WORLD), W, 60);
  ParamStore ps_par, ps_one;
  Rng r1(5), r2(5);
  MoeLayer sharded(host_ctx(), ps_par, "m", C, cfg, H, r1, 0.5f, 0.5f, 9, par.get());
  MoeLayer whole(host_ctx(), ps_one, "m", C, cfg, H, r2, 0.5f, 0.5f, 9, nullptr);
  ps_par.finalize(host_ctx());
  ps_one.finalize(host_ctx());
  if (skew)
    for (ParamStore* ps : {&ps_par, &ps_one}) ps->find("m.router.w")->value.f32()[0] = 50.f;  // x_0 -> expert 0
  Rng in(77);
  Tensor all = testing::randn({n * W, C}, in), R = testing::randn({n * W, C}, in);
  for (int64_t i = 0; i < n * W; ++i) all.f32()[i * C] = std::fabs(all.f32()[i * C]) + 0.1f;  // skew works
  Tensor mine = all.rows(w.rank() * n, (w.rank() + 1) * n).clone(),
         Rm = R.rows(w.rank() * n, (w.rank() + 1) * n).clone();
  Tensor y = sharded.forward(mine), y1 = whole.forward(all);
  for (int64_t i = 0; i < n * C; ++i) ASSERT_NEAR(y.f32()[i], y1.f32()[w.rank() * n * C + i], 1e-5f);
  EXPECT_NEAR(sharded.stats().lb_loss, whole.stats().lb_loss, 1e-6);
  EXPECT_NEAR(sharded.stats().budget_loss, whole.stats().budget_loss, 1e-6);
  if (grouped) EXPECT_GT(whole.stats().budget_loss, 0.0);
  EXPECT_NEAR(sharded.stats().realized_cost, whole.stats().realized_cost, 1e-12);
  EXPECT_NEAR(sharded.stats().expected_cost, whole.stats().expected_cost, 1e-9);
  // Taken on each rank's tokens and reported as the mean over ranks (the
  // same on every rank: it was each rank's own).
  EXPECT_NEAR(sharded.stats().z_loss, whole.stats().z_loss, 1e-6);
  if (router_losses) EXPECT_GT(whole.stats().lb_loss, 0.0);
  if (skew) {
    EXPECT_NEAR(whole.stats().load[0], 0.5, 1e-12);  // every token's first choice
    EXPECT_EQ(sharded.stats().load, whole.stats().load);
  }
  if (router_losses) return;
  // Backward: input gradients match; expert gradients, summed over ranks
  // (each rank's loss is its share), match the single layer's.
  ps_par.zero_grad(host_ctx());
  ps_one.zero_grad(host_ctx());
  Tensor dx = sharded.backward(Rm), dx1 = whole.backward(R);
  for (int64_t i = 0; i < n * C; ++i) ASSERT_NEAR(dx.f32()[i], dx1.f32()[w.rank() * n * C + i], 1e-4f);
  for (const char* name : {"m.experts.w1", "m.experts.b1", "m.experts.w2"}) {
    const Param* p = ps_par.find(name);
    const Param* all = ps_one.find(name);
    EXPECT_EQ(p->global_numel(), all->value.numel());
    for (int64_t i = 0; i < p->grad.numel(); ++i) {
      ASSERT_EQ(p->value.f32()[i], all->value.f32()[p->global_begin() + i]) << name << " " << i;
      ASSERT_NEAR(p->grad.f32()[i], all->grad.f32()[p->global_begin() + i], 1e-4f) << name << " " << i;
    }
  }
}

TEST(ExpertParallel, ShardedLayerEqualsOneRank) {
  compare_with_single_rank(false, false);
  compare_with_single_rank(false, true);
}
TEST(ExpertParallel, GroupedBalanceIsTheMeanOverRanks) { compare_with_single_rank(false, true, false, true); }
TEST(ExpertParallel, HeterogeneousExpertsShardedLayerEqualsOneRank) {
  compare_with_single_rank(false, false, true);
  compare_with_single_rank(false, true, true);
}
TEST(ExpertParallel, AllTokensToOneRanksExpertsNoMismatchNoHang) {
  compare_with_single_rank(true, false);
  compare_with_single_rank(true, true);
}

// Rank 0 reports the metrics, so dropped and entropy must describe every
// rank's tokens. Rank 0's tokens all choose expert 0 (and overflow it); the
// others' spread out, so a rank-local dropped fraction would differ.
TEST(ExpertParallel, DroppedAndEntropyCoverEveryRank) {
  auto& w = world();
  const int W = w.size();
  if (W < 2) GTEST_SKIP() << "needs 2 ranks";
  const int64_t C = 6, H = 5, G = 2 * W, n = 16;
  switchyard::MoeConfig cfg;
  cfg.set_num_experts(static_cast<int32_t>(G));
  cfg.set_top_k(1);
  cfg.set_capacity_factor(1.0f);
  cfg.set_load_balance_coef(0.f);
  cfg.set_z_loss_coef(0.f);
  auto par = ParallelContext::create(std::make_unique<comm::MpiCommunicator>(MPI_COMM_WORLD), W, 60);
  ParamStore ps_par, ps_one;
  Rng r1(5), r2(5);
  MoeLayer sharded(host_ctx(), ps_par, "m", C, cfg, H, r1, 0.5f, 0.5f, 9, par.get());
  MoeLayer whole(host_ctx(), ps_one, "m", C, cfg, H, r2, 0.5f, 0.5f, 9, nullptr);
  ps_par.finalize(host_ctx());
  ps_one.finalize(host_ctx());
  for (ParamStore* ps : {&ps_par, &ps_one}) ps->find("m.router.w")->value.f32()[0] = 50.f;
  Rng in(77);
  Tensor all = testing::randn({n * W, C}, in);
  for (int64_t i = 0; i < n * W; ++i) {
    const float a = std::fabs(all.f32()[i * C]) + 0.1f;
    all.f32()[i * C] = i < n ? a : -a;  // rank 0: expert 0 wins by a wide margin
  }
  Tensor mine = all.rows(w.rank() * n, (w.rank() + 1) * n).clone();
  sharded.forward(mine);
  whole.forward(all);
  Tensor counts_t = Tensor::from_host(
      std::vector<double>{static_cast<double>(sharded.route().dropped), static_cast<double>(sharded.route().assigned)});
  const double* counts = counts_t.data<double>();
  const double local = counts[0] / counts[1];
  w.all_reduce_sum(counts_t, Stream{}, "test");
  EXPECT_GT(counts[0], 0.0);
  EXPECT_DOUBLE_EQ(sharded.stats().dropped, counts[0] / counts[1]);
  if (w.rank() == 0) EXPECT_NE(local, counts[0] / counts[1]);  // the check can fail
  EXPECT_NEAR(sharded.stats().entropy, whole.stats().entropy, 1e-9);
}

// Routed attention under data parallelism: each rank sees different tokens,
// even in its warm-up batch, yet with rank 0's warm-up centroids broadcast
// and the cluster statistics summed over ranks before every EMA update the
// centroids stay identical everywhere (and without both they differ).
double centroid_spread(bool sync) {
  auto& w = world();
  switchyard::AttentionConfig a;
  a.set_kind(switchyard::AttentionConfig::ROUTED);
  a.set_num_routing_heads(2);
  a.set_num_clusters(3);
  a.set_window(4);
  a.set_ema_decay(0.5f);  // a fast EMA: differences show within a few steps
  ParamStore ps;
  Rng rng(3);  // the same weights and k-means seed everywhere
  SparseSelfAttention attn(host_ctx(), ps, "a", 8, 2, SparseAttentionSpec{a, 12, nullptr, 5}, rng, 0.5f, 0.5f);
  ps.finalize(host_ctx());
  if (sync) {
    attn.set_stats_reducer([&](Tensor& v) { w.all_reduce_sum(v, Stream{}, "centroids"); });
    attn.set_centroid_broadcaster([&](Tensor& v) { w.broadcast(v, 0, Stream{}, "centroids"); });
  }
  Rng own(100 + w.rank());
  attn.set_training(false);
  attn.calibrate_next_forward();
  attn.forward(testing::randn({2 * 12, 8}, own), 2, 12);
  attn.set_training(true);
  for (int step = 0; step < 5; ++step) {
    attn.forward(testing::randn({2 * 12, 8}, own), 2, 12);
    attn.update_centroids();
  }
  // max over elements of (max over ranks - min over ranks)
  double spread = 0;
  for (const auto& c : attn.centroids())
    for (float v : c.mu.to_vector<float>()) {
      double hi = v, lo = -v;
      MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      spread = std::max(spread, hi + lo);
    }
  return spread;
}

TEST(RoutedAttention, CentroidsStayIdenticalAcrossDataParallelRanks) {
  if (world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  EXPECT_EQ(centroid_spread(true), 0.0);
  EXPECT_GT(centroid_spread(false), 1e-3);  // the check can fail
}

// A communicator whose time is counted one collective late, and in full on
// settle_comm_seconds(), as NCCL's event times are (read once a later call
// finds them done): an MPI one inside, each call's own time logged by
// context, so a test knows what a window of calls took.
class LateCounting final : public comm::Communicator {
 public:
  explicit LateCounting(std::unique_ptr<comm::Communicator> inner) : inner_(std::move(inner)) {
    timeout_s_ = inner_->timeout_s();
  }
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::vector<int> world_ranks() const override { return inner_->world_ranks(); }
  std::unique_ptr<comm::Communicator> split(int color, int key) const override {
    return std::make_unique<LateCounting>(inner_->split(color, key));
  }
  void all_to_all_counts(const std::vector<int64_t>& send, std::vector<int64_t>& recv, const char* context) override {
    timed(context, [&] { inner_->all_to_all_counts(send, recv, context); });
  }
  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_rows, Tensor& recv,
                    const std::vector<int64_t>& recv_rows, Stream stream, const char* context) override {
    timed(context, [&] { inner_->all_to_all_v(send, send_rows, recv, recv_rows, stream, context); });
  }
  void all_reduce_sum(Tensor& t, Stream stream, const char* context) override {
    timed(context, [&] { inner_->all_reduce_sum(t, stream, context); });
  }
  using comm::Communicator::all_reduce_sum;
  void broadcast(Tensor& t, int root, Stream stream, const char* context) override {
    timed(context, [&] { inner_->broadcast(t, root, stream, context); });
  }
  void barrier(const char* context) override {
    timed(context, [&] { inner_->barrier(context); });
  }
  bool concurrent_collectives() const override { return inner_->concurrent_collectives(); }
  void settle_comm_seconds() override { comm_seconds_ += pending_, pending_ = 0; }
  // Each call's (context, seconds) since the last clear.
  std::vector<std::pair<std::string, double>> log;

 private:
  template <class F>
  void timed(const char* context, F&& call) {
    const double before = inner_->comm_seconds();
    call();
    const double took = inner_->comm_seconds() - before;
    comm_seconds_ += pending_;  // the call before this one's, only now
    pending_ = took;
    log.emplace_back(context, took);
  }
  std::unique_ptr<comm::Communicator> inner_;
  double pending_ = 0;
};

// The watchdog keeps a slot for each thread running collectives (8 at once
// at most) and takes it back when the thread ends: a process that starts
// more threads over its life than that, one after another (a thread-mode
// gradient reducer's worker per Trainer), still runs. (Planted: slots never
// given back fail at the ninth thread with "more than 8 threads".)
TEST(Communicator, ThreadsOneAfterAnotherNeverRunOutOfWatchdogSlots) {
  if (!comm::MpiSession::thread_multiple()) GTEST_SKIP() << "MPI without MPI_THREAD_MULTIPLE";
  auto& w = world();
  for (int i = 0; i < 12; ++i) {
    double sum = 0;
    std::string error;
    std::thread t([&] {
      try {
        sum = w.all_reduce_sum(1.0, "watchdog slots");
      } catch (const std::exception& e) {
        error = e.what();
      }
    });
    t.join();
    ASSERT_EQ(error, "") << "thread " << i;
    EXPECT_EQ(sum, w.size()) << "thread " << i;
  }
}

// The MoE all-to-all time a training step reports is its own exchanges'
// (the expert-parallel group's calls between its start and its gradient
// norm), on a communicator that counts late, as NCCL's does: no collective
// of the step before, none missing at its end; two micro-batches a step.
TEST(Trainer, AllToAllTimeIsEachStepsOwnOnALateCountingCommunicator) {
  const int W = world().size();
  if (W < 2) GTEST_SKIP() << "needs 2 ranks";
  Config cfg = parse_config(R"(
    model { n_layers: 2 d_model: 16 n_heads: 2 ffn_hidden: 24 seq_len: 16 }
    train { batch: 8 micro_batches: 2 steps: 4 warmup_steps: 1 eval_interval: 0 seed: 5 }
    data { synthetic_bytes: 10000 }
    moe { num_experts: 4 every_n_layers: 1 dropless: true }
  )", "test");
  cfg.mutable_parallel()->set_expert_parallel(W == 4 ? 4 : 2);
  validate_config(cfg, "test");
  auto par = ParallelContext::create(std::make_unique<LateCounting>(std::make_unique<comm::MpiCommunicator>(MPI_COMM_WORLD)),
                                     cfg.parallel().expert_parallel(), 60);
  auto& ep = dynamic_cast<LateCounting&>(*par->ep);
  TrainOptions opts;
  opts.par = par.get();
  Trainer t(cfg, opts);
  for (int64_t step = 1; step <= 3; ++step) {
    ep.log.clear();
    const StepResult r = t.step(step);
    double own = 0;
    int exchanges = 0;
    for (const auto& [context, s] : ep.log)
      if (context != "gradient norm") own += s, ++exchanges;
    EXPECT_GT(exchanges, 0) << "step " << step;
    EXPECT_NEAR(r.all_to_all_s, own, 1e-9) << "step " << step;
  }
}

// A depth-routed MoE block at evaluation on several expert-parallel ranks:
// the causal predictor routes a different number of tokens on every rank
// (here by each rank's own depth.tau: none, some or all of a sequence's), yet
// every rank makes the same calls into the MoE layer, whose collectives pair
// up call by call (runtime/model.cc, Block::run_forward): no rank waits for a
// call another never makes (the communicator's timeout would throw), and each
// rank's logits are those of the same model on one process, and the MoE
// statistics count no padding row. (Planted: the
// zero row of a sequence with nothing routed left out, a rank that routes
// nothing makes no call and the others time out.)
TEST(Depth, MoeBlockAtEvaluationMakesTheSameCallsOnEveryRank) {
  auto& w = world();
  const int W = w.size();
  if (W < 2) GTEST_SKIP() << "needs 2 ranks";
  const int64_t B = 2, T = 8;
  // Each case's tau per rank (rank r takes taus[r % 2]): 0.999 routes no
  // token, 0.001 every token, 0.5 some.
  const std::vector<std::pair<float, float>> cases = {{0.999f, 0.001f}, {0.5f, 0.001f}, {0.999f, 0.5f}};
  for (const auto& [even, odd] : cases) {
    const float tau = w.rank() % 2 == 0 ? even : odd;
    Config cfg = parse_config(R"(
      model { d_model: 16 n_layers: 2 n_heads: 2 ffn_hidden: 16 seq_len: 8 }
      moe { num_experts: 4 every_n_layers: 2 capacity_factor: 2 }
      depth { every_n_layers: 2 capacity: 0.5 }
    )", "test");
    cfg.mutable_depth()->set_tau(tau);
    cfg.mutable_parallel()->set_expert_parallel(W == 4 ? 4 : 2);
    validate_config(cfg, "test");
    auto par = ParallelContext::create(std::make_unique<comm::MpiCommunicator>(MPI_COMM_WORLD),
                                       cfg.parallel().expert_parallel(), 20);
    Config one_cfg = cfg;
    one_cfg.mutable_parallel()->set_expert_parallel(1);
    Transformer sharded(host_ctx(), cfg, par.get());
    Transformer one(host_ctx(), one_cfg);
    sharded.set_training(false);
    one.set_training(false);
    auto batch_of = [&](int rank) {
      Batch b;
      for (int64_t i = 0; i < B * T; ++i)
        b.inputs.push_back(static_cast<int32_t>((i * 37 + 11 * rank + 5) % 256)), b.targets.push_back(0);
      return b;
    };
    const Batch b = batch_of(w.rank());
    sharded.forward(b);
    one.forward(b);
    const std::vector<float> got = sharded.logits().to_vector<float>();
    const std::vector<float> want = one.logits().to_vector<float>();
    ASSERT_EQ(got.size(), want.size());
    double diff = 0, norm = 0;
    for (size_t i = 0; i < got.size(); ++i)
      diff += (got[i] - want[i]) * (got[i] - want[i]), norm += want[i] * want[i];
    EXPECT_LE(std::sqrt(diff / norm), 1e-6) << "rank " << w.rank() << " tau " << tau;
    // The case is the one named: what the routed blocks processed on this
    // rank (depth_fractions: all, none or neither).
    const double processed = sharded.blocks().at(1).depth()->processed();
    if (tau > 0.99f) EXPECT_EQ(processed, 0.0) << "rank " << w.rank();
    if (tau < 0.01f) EXPECT_EQ(processed, 1.0) << "rank " << w.rank();
    // Where the even ranks route nothing, the layer's statistics (every
    // rank's tokens, pooled over the calls) are the odd ranks' sequences'
    // alone, evaluated by one process: the padding rows count in none.
    if (even > 0.99f) {
      Config odd_cfg = one_cfg;
      odd_cfg.mutable_depth()->set_tau(odd);
      Transformer odd_ranks(host_ctx(), odd_cfg);
      odd_ranks.set_training(false);
      Batch all;
      for (int r = 1; r < W; r += 2) {
        const Batch part = batch_of(r);
        all.inputs.insert(all.inputs.end(), part.inputs.begin(), part.inputs.end());
        all.targets.insert(all.targets.end(), part.targets.begin(), part.targets.end());
      }
      odd_ranks.forward(all);
      const RoutingStats& got_stats = sharded.moe_layers().at(0).second->stats();
      const RoutingStats& want_stats = odd_ranks.moe_layers().at(0).second->stats();
      ASSERT_EQ(got_stats.load.size(), want_stats.load.size());
      for (size_t g = 0; g < want_stats.load.size(); ++g)
        EXPECT_NEAR(got_stats.load[g], want_stats.load[g], 1e-12) << "rank " << w.rank() << " expert " << g;
      EXPECT_NEAR(got_stats.dropped, want_stats.dropped, 1e-12) << "rank " << w.rank();
      EXPECT_NEAR(got_stats.entropy, want_stats.entropy, 1e-6) << "rank " << w.rank();
      // The z-loss, taken on each rank's tokens: the mean over the calls
      // that routed some, not over every rank's (a padding call's 0 counted).
      ASSERT_GT(want_stats.z_loss, 0.0);
      EXPECT_NEAR(got_stats.z_loss, want_stats.z_loss, 1e-6 * want_stats.z_loss) << "rank " << w.rank();
    }
  }
}

// Before NCCL's first call, every rank orders its communicators' launches
// as the host issued them (comm/nccl_communicator.h), unless the user chose.
TEST(NcclEnvironment, LaunchOrderIsImplicitUnlessTheUserChose) {
  const char* const had = std::getenv("NCCL_LAUNCH_ORDER_IMPLICIT");
  const std::string kept = had ? had : "";
  unsetenv("NCCL_LAUNCH_ORDER_IMPLICIT");
  EXPECT_TRUE(comm::nccl_launch_order_default());
  ASSERT_NE(std::getenv("NCCL_LAUNCH_ORDER_IMPLICIT"), nullptr);
  EXPECT_STREQ(std::getenv("NCCL_LAUNCH_ORDER_IMPLICIT"), "1");
  setenv("NCCL_LAUNCH_ORDER_IMPLICIT", "0", 1);  // the user's 0 stays 0
  EXPECT_FALSE(comm::nccl_launch_order_default());
  EXPECT_STREQ(std::getenv("NCCL_LAUNCH_ORDER_IMPLICIT"), "0");
  if (had) setenv("NCCL_LAUNCH_ORDER_IMPLICIT", kept.c_str(), 1);
  else unsetenv("NCCL_LAUNCH_ORDER_IMPLICIT");
}

}  // namespace
}  // namespace sy
