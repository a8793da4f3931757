// Op cases: routes, gating, group limits, Sinkhorn, hashing, the router's
// backward, the budget (tests/backend_ops_test.cc).
#include <tuple>

#include "tests/backend_ops/harness.h"

namespace sy::op_test {
namespace {

// Selection keys (N, G) with fewer than k finite in some rows: every other
// row keeps 0 or 2 finite keys, the rest NaN or -inf.
void make_keys_nonfinite(Tensor& keys) {
  const int64_t N = keys.dim(0), G = keys.dim(1);
  const float nan = std::numeric_limits<float>::quiet_NaN(), ninf = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < N; i += 2)
    for (int64_t j = i % 4; j < G; ++j) keys.f32()[i * G + j] = (i + j) % 3 == 0 ? nan : ninf;
}

}  // namespace

void add_routing_cases(std::vector<OpCase>& c) {
  // ---- routing ----
  for (auto fn : {ops::ScoreFn::softmax, ops::ScoreFn::sigmoid}) {
    const std::string name = fn == ops::ScoreFn::softmax ? "softmax" : "sigmoid";
    for (const int64_t G : {37, 8, 100, 130})  // CUDA's softmax in registers: 8 lanes a row, 5 and 1 values a lane; 16 lanes, 7; from memory
      c.push_back({"router_scores_" + name + (G == 37 ? "" : "_" + std::to_string(G)), Tol::f32,
                   [G](Rng& r) { return Ins{randn({40, G}, r, 2.f), randn({40, G}, r)}; },
                   [G](Ctx& x, const Ins&) { return Outs{fresh(x, {40, G}), acc(x, {40, G})}; },
                   [fn](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                     ops::router_scores(x, o[0], in[0], fn);
                     ops::router_scores_backward(x, o[1], in[1], o[0], fn);
                   }});
  }
  // Sigmoid scores normalised per row (the balance loss's distribution) and
  // its backward, added onto an accumulator; G 37 and 130 (lanes over
  // several values a row), a zero row (3) left 0 and without gradient.
  for (const int64_t G : {37, 130})
    c.push_back({"normalize_scores_" + std::to_string(G), Tol::f32,
                 [G](Rng& r) {
                   const Tensor logits = randn({40, G}, r, 2.f);
                   Ins in{Tensor::empty({40, G}, DType::f32, host_ctx()), randn({40, G}, r), randn({40, G}, r)};
                   ops::router_scores(host_ctx(), in[0], logits, ops::ScoreFn::sigmoid);
                   for (int64_t g = 0; g < G; ++g) in[0].f32()[3 * G + g] = 0.f;
                   return in;
                 },
                 [G](Ctx& x, const Ins&) { return Outs{fresh(x, {40, G}), acc(x, {40, G})}; },
                 [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::normalize_scores(x, o[0], in[0]);
                   o[1].copy_from(in[2], x);  // added onto what is there, not written
                   ops::normalize_scores_backward(x, o[1], in[1], in[0]);
                 }});
  // NaN selection keys rank last (ties to the lower group): rows 3 and 7
  // all NaN take groups 0, 1; row 5's NaN group is never above a number.
  // Without that rule the GPU left choices unwritten and indexed with them.
  c.push_back(tokens_choose_case(
      "tokens_choose_nan_keys", 40, 8, 2,
      [](const Ins& in) {
        ops::TokensChooseParams p;
        p.capacity_factor = 1.0f;
        p.selection_keys = &in[2];
        return p;
      },
      true, 1, [](Ins& in) {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        for (int64_t g = 0; g < 8; ++g) in[2].f32()[3 * 8 + g] = in[2].f32()[7 * 8 + g] = nan;
        in[2].f32()[5 * 8 + 2] = nan;
      }));
  c.push_back(tokens_choose_case("tokens_choose_position", 40, 8, 2, [](const Ins&) {
    ops::TokensChooseParams p;
    p.capacity_factor = 1.0f;
    return p;
  }));
  // A floor over C = ceil(0.25 * 40 * 2 / 8) = 3 (moe.min_capacity): 7.
  c.push_back(tokens_choose_case("tokens_choose_min_capacity", 40, 8, 2, [](const Ins&) {
    ops::TokensChooseParams p;
    p.capacity_factor = 0.25f;
    p.min_capacity = 7;
    return p;
  }));
  c.push_back(tokens_choose_case("tokens_choose_score_bias_renorm", 53, 6, 2, [](const Ins& in) {
    ops::TokensChooseParams p;
    p.capacity_factor = 0.6f;  // drops
    p.priority = ops::SlotPriority::score;
    p.renormalize = true;
    p.selection_bias = &in[1];
    return p;
  }));
  c.push_back(tokens_choose_case("tokens_choose_dropless_keys", 37, 7, 3, [](const Ins& in) {
    ops::TokensChooseParams p;
    p.dropless = true;
    p.priority = ops::SlotPriority::score;
    p.selection_keys = &in[2];
    return p;
  }, true));
  c.push_back(tokens_choose_case("tokens_choose_top1_many_groups", 300, 70, 1, [](const Ins&) {
    ops::TokensChooseParams p;
    p.capacity_factor = 1.25f;
    return p;
  }));
  // The top-k on given probabilities at k above 3 and over more than 128
  // groups, exact against the CPU (the gating cases below compare their
  // routes with the same top-k run on the probabilities they made, so a
  // top-k wrong at large k or G fails only here).
  for (const auto& [name, N, G, k] : std::vector<std::tuple<std::string, int64_t, int64_t, int>>{
           {"tokens_choose_k6_of_16", 200, 16, 6}, {"tokens_choose_k10_of_40", 300, 40, 10},
           {"tokens_choose_top2_130", 300, 130, 2}})
    c.push_back(tokens_choose_case(name, N, G, k, [](const Ins&) {
      ops::TokensChooseParams p;
      p.capacity_factor = 1.25f;
      return p;
    }));
  // Selection keys with fewer than k finite in some rows, exact against the
  // CPU: NaN ranks as -inf, and -inf is picked before an empty place (the
  // gating case keys_nonfinite_16 compares two CUDA top-k's with each other).
  c.push_back(tokens_choose_case(
      "tokens_choose_keys_nonfinite", 300, 16, 4,
      [](const Ins& in) {
        ops::TokensChooseParams p;
        p.capacity_factor = 1.25f;
        p.selection_keys = &in[2];
        return p;
      },
      true, 1, [](Ins& in) { make_keys_nonfinite(in[2]); }));
  // Padded: offsets g C on the device (written by the kernel, not copied) and
  // the host part set without a copy back; drops by score priority.
  c.push_back(tokens_choose_case("tokens_choose_padded_score", 53, 6, 2, [](const Ins& in) {
    ops::TokensChooseParams p;
    p.capacity_factor = 0.6f;
    p.priority = ops::SlotPriority::score;
    p.selection_bias = &in[1];
    p.padded = true;
    return p;
  }));
  // Runs with their own groups (routed attention's stacked heads): drops by
  // capacity in some runs and not others, then dropless over runs of unequal loads.
  c.push_back(tokens_choose_case("tokens_choose_runs_capacity", 60, 5, 1, [](const Ins& in) {
    ops::TokensChooseParams p;
    p.capacity_factor = 1.0f;
    p.selection_bias = &in[1];
    return p;
  }, false, 4));
  c.push_back(tokens_choose_case("tokens_choose_runs_dropless_score", 66, 7, 2, [](const Ins&) {
    ops::TokensChooseParams p;
    p.dropless = true;
    p.priority = ops::SlotPriority::score;
    return p;
  }, false, 3));
  // Group-limited routing (ops/group_limit.h): the keys alone, on values
  // drawn from five levels (ties within and across groups, -0 and +0) and
  // -inf, 8 groups of 8 (the two best summed, 3 kept; a bias with a NaN,
  // whose expert then ranks last) and 3 groups of 7 (the best one, 2 kept);
  // then tokens choose within the kept groups, by p plus a bias and by
  // selection keys. (NaN keys would pass through to the output, which must
  // hold no NaN: tests/group_limit_test.cc ranks them on the host.)
  struct LimitSpec { int64_t N, R, M, kept, top_n; bool bias; };
  for (const LimitSpec l : {LimitSpec{300, 8, 8, 3, 2, true}, LimitSpec{77, 3, 7, 2, 1, false}}) {
    const int64_t G = l.R * l.M;
    c.push_back({"limit_groups_" + std::to_string(l.R) + "x" + std::to_string(l.M), Tol::exact,
                 [=](Rng& r) {
                   Tensor t = randn({l.N, G}, r);
                   const float levels[] = {-1.f, -0.f, 0.f, 0.5f, 1.f};
                   for (int64_t i = 0; i < t.numel(); ++i)
                     t.f32()[i] = i % 97 == 5 ? -std::numeric_limits<float>::infinity() : levels[r.below(5)];
                   Tensor bias = randn({G}, r, 0.25f);
                   bias.f32()[G / 2] = std::numeric_limits<float>::quiet_NaN();
                   return Ins{t, bias};
                 },
                 [=](Ctx& x, const Ins&) { return Outs{fresh(x, {l.N, G})}; },
                 [=](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::GroupLimit gl;
                   gl.groups = l.R;
                   gl.kept = l.kept;
                   gl.top_n = l.top_n;
                   ops::limit_groups(x, o[0], in[0], l.bias ? &in[1] : nullptr, gl);
                 }});
  }
  // Hash routing's keys (ops/hash_routing.h): integer hashing, exact; ids
  // up to 2^31 - 1, 8 and 61 experts.
  for (const int64_t G : {8, 61}) {
    c.push_back({"hash_route_keys_" + std::to_string(G), Tol::exact,
                 [](Rng& r) {
                   Tensor ids = ints({500}, r, 50257);
                   ids.data<int32_t>()[7] = 2147483647;
                   return Ins{ids};
                 },
                 [=](Ctx& x, const Ins&) { return Outs{fresh(x, {500, G})}; },
                 [](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::hash_route_keys(x, o[0], in[0], 77); }});
  }
  // Balanced assignment's table (moe.hash_assignment BALANCED): expert
  // table[id], 1000 ids over 13 experts.
  c.push_back({"hash_route_keys_table_13", Tol::exact,
               [](Rng& r) { return Ins{ints({500}, r, 1000), ints({1000}, r, 13)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {500, 13})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::hash_route_keys(x, o[0], in[0], 77, in[1]); }});
  // Sinkhorn balancing (ops/sinkhorn.h): CUDA's fp32 warp rows and chunked
  // columns against the double reference; 300 rows (two chunks, the
  // second partial) over 64 experts, 1000 over 8 (fewer experts than a
  // warp's lanes) and 600 over 100 (lanes of 4 and 3 values). Each expert's
  // keys carry an offset from -2 to 2, so h is of order 1: on keys with no
  // column preference h is a small difference of terms near log N + log G,
  // which fp32 resolves to ~1e-6 absolute only (a relative error of 1e-5
  // and more on a correct kernel). 130 experts: a second block of columns,
  // most of its threads past G.
  struct SinkhornSpec { int64_t N, G; int iters; };
  for (const SinkhornSpec k : {SinkhornSpec{300, 64, 5}, SinkhornSpec{1000, 8, 20}, SinkhornSpec{600, 100, 3},
                               SinkhornSpec{300, 130, 3}}) {
    c.push_back({"sinkhorn_" + std::to_string(k.N) + "x" + std::to_string(k.G) + "_i" + std::to_string(k.iters),
                 Tol::f32,
                 [=](Rng& r) {
                   Tensor t = randn({k.N, k.G}, r);
                   for (int64_t i = 0; i < k.N; ++i)
                     for (int64_t g = 0; g < k.G; ++g) t.f32()[i * k.G + g] += 4.f * g / k.G - 2.f;
                   return Ins{t};
                 },
                 [=](Ctx& x, const Ins&) { return Outs{fresh(x, {k.G})}; },
                 [=](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::sinkhorn_balance(x, o[0], in[0], k.iters); }});
  }
  // Random token selection: the slots in the order of priority keys (on
  // quarter steps, so many tie: the lower token first), top-2 with drops.
  c.push_back({"tokens_choose_priority_keys", Tol::exact,
               [](Rng& r) {
                 Tensor keys = randn({90}, r);
                 for (int64_t i = 0; i < 90; ++i) keys.f32()[i] = std::round(keys.f32()[i] * 4.f) / 4.f;
                 return Ins{probs_of({90, 6}, r), keys};
               },
               [](Ctx& x, const Ins&) { return route_outputs(x, 90, 2, 6); },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::TokensChooseParams p;
                 p.k = 2;
                 p.capacity_factor = 0.7f;
                 p.priority = ops::SlotPriority::score;
                 p.priority_keys = &in[1];
                 ops::Route route;
                 ops::tokens_choose(x, route, in[0], p);
                 put_route(x, route, o);
               }});
  // Token by token (TOKEN_ORDER priority): top-3 with drops, and over runs of
  // their own groups (the same key without choice-rank bits).
  c.push_back(tokens_choose_case("tokens_choose_token_order", 90, 7, 3, [](const Ins&) {
    ops::TokensChooseParams p;
    p.capacity_factor = 0.6f;
    p.priority = ops::SlotPriority::token_order;
    return p;
  }));
  c.push_back(tokens_choose_case(
      "tokens_choose_token_order_runs", 96, 5, 2,
      [](const Ins&) {
        ops::TokensChooseParams p;
        p.capacity_factor = 0.8f;
        p.priority = ops::SlotPriority::token_order;
        return p;
      },
      false, 4));
  c.push_back(tokens_choose_case("tokens_choose_group_limit_bias", 90, 12, 3, [](const Ins& in) {
    ops::TokensChooseParams p;
    p.capacity_factor = 1.0f;
    p.selection_bias = &in[1];
    p.group_limit.groups = 4;
    p.group_limit.kept = 2;
    return p;
  }));
  c.push_back(tokens_choose_case("tokens_choose_group_limit_keys", 90, 16, 2, [](const Ins& in) {
    ops::TokensChooseParams p;
    p.capacity_factor = 1.0f;
    p.selection_keys = &in[2];
    p.group_limit.groups = 8;
    p.group_limit.kept = 1;
    p.group_limit.top_n = 1;
    return p;
  }, true));
  // (The large ones take several tiles a column and two chunks of 32 groups
  // in the CUDA select, ops/cuda/column_select.h; "ties": five values, -0
  // and +0 among them, so most of a column ties at its threshold.)
  struct GroupsSpec { int64_t N, G, capacity, segment; bool own = false, ties = false; };
  for (const GroupsSpec g : {GroupsSpec{37, 4, 9, 0}, GroupsSpec{24, 3, 5, 8}, GroupsSpec{64, 1, 3, 16},
                             GroupsSpec{12, 2, 20, 6}, GroupsSpec{40, 3, 4, 10, true}, GroupsSpec{12, 2, 20, 6, true},
                             GroupsSpec{4096, 40, 100, 0}, GroupsSpec{4096, 40, 100, 0, false, true},
                             GroupsSpec{2048, 8, 37, 512, true, true}, GroupsSpec{37, 4, 9, 0, false, true}}) {
    const int64_t groups = g.own ? g.N / g.segment * g.G : g.G;
    c.push_back({"groups_choose_" + std::to_string(g.N) + "x" + std::to_string(g.G) + "_s" + std::to_string(g.segment) +
                     (g.own ? "_own" : "") + (g.ties ? "_ties" : ""), Tol::exact,
                 [g](Rng& r) {
                   Tensor t = randn({g.N, g.G}, r);
                   const float levels[] = {-1.f, -0.f, 0.f, 0.5f, 1.f};
                   if (g.ties)
                     for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = levels[r.below(5)];
                   return Ins{t};
                 },
                 [g, groups](Ctx& x, const Ins&) { return route_outputs(x, g.N, g.G, groups); },
                 [g](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::Route route;
                   ops::groups_choose(x, route, in[0], g.capacity, g.segment, g.own);
                   put_route(x, route, o);
                 }});
  }
  c.push_back({"threshold_route", Tol::exact, [](Rng& r) { return Ins{randn({1500}, r)}; },
               [](Ctx& x, const Ins&) { return route_outputs(x, 1500, 1, 1); },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::Route route;
                 ops::threshold_route(x, route, in[0], 0.3f);
                 put_route(x, route, o);
               }});
  for (bool renorm : {false, true}) {
    c.push_back({std::string("route_weights_backward") + (renorm ? "_renormalized" : ""), Tol::f32,
                 [](Rng& r) { return Ins{probs_of({45, 6}, r), randn({90}, r)}; },
                 [](Ctx& x, const Ins&) { return Outs{acc(x, {45, 6})}; },
                 [renorm](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::Route route;
                   ops::TokensChooseParams p;
                   p.k = 2;
                   p.capacity_factor = 0.8f;
                   p.renormalize = renorm;
                   ops::tokens_choose(x, route, in[0], p);
                   ops::route_weights_backward(x, o[0], in[1], in[0], route, renorm);
                 }});
  }
  // Gating in one call (tokens_choose_logits; on CUDA one kernel for the
  // scores and the top-k): its probabilities against the CPU (class F: the
  // device's expf), and on each backend the probabilities and the route bit
  // for bit router_scores then tokens_choose (the route is not compared
  // across backends: ulps in the probabilities may flip a near tie). G 3 to
  // 130, k 1 to 8; softmax by position;
  // sigmoid renormalised by score with a bias; Gumbel-style selection keys in
  // runs with their own groups; padded; dropless. On CUDA up to 128 groups
  // the row stays in registers (8 lanes a row up to 64 groups, 16 past
  // that: G 24, 64, 70, 100, 128; 300 rows, so the last block's last rows
  // are past N), past that it is read back from memory (G 130): the register top-k
  // against tokens_choose's from memory, bit for bit (router_scores' softmax
  // is the same register code below 129 groups: its probabilities are
  // compared with the CPU's). softmax_ties_100: whole-number logits, so
  // equal probabilities within a lane and across lanes (the tie rules), by
  // score (the top score orders the slots); keys_runs_100: keys with k = 3.
  // tokens_gate (the same choice without slots) equals each call's
  // probabilities, groups and weights bit for bit.
  struct GateCase {
    std::string name;
    int64_t G;
    int k;
    bool sigmoid, keys, padded, dropless;
    int64_t segment;
    int64_t N = 300;
  };
  for (const GateCase& g : std::vector<GateCase>{{"softmax", 24, 2, false, false, false, false, 0},
                                                 {"sigmoid_bias_score", 70, 3, true, false, false, false, 0},
                                                 {"keys_runs", 70, 1, false, true, false, false, 100},
                                                 {"padded", 24, 2, false, false, true, false, 0},
                                                 {"dropless", 70, 2, false, false, false, true, 0},
                                                 {"softmax_64", 64, 2, false, false, false, false, 0},
                                                 {"sigmoid_bias_128", 128, 2, true, false, false, false, 0},
                                                 {"softmax_130", 130, 2, false, false, false, false, 0},
                                                 {"softmax_ties_100", 100, 3, false, false, false, false, 0},
                                                 {"keys_runs_100", 100, 3, false, true, false, false, 100},
                                                 // sigmoid in scores_in_registers at 3 and 8 values a
                                                 // lane, and in gate_topk_kernel (G > 128)
                                                 {"sigmoid_bias_24", 24, 2, true, false, false, false, 0},
                                                 {"sigmoid_bias_64", 64, 2, true, false, false, false, 0},
                                                 {"sigmoid_bias_130", 130, 2, true, false, false, false, 0},
                                                 // each lane's k best and the butterfly merge at k 3 to
                                                 // 8 (topk_merge.h's K 4 and 8), rows of 3 and 16 groups
                                                 {"softmax_k3_of_3", 3, 3, false, false, false, false, 0},
                                                 {"softmax_k4_16", 16, 4, false, false, false, false, 0},
                                                 {"sigmoid_bias_k8_68", 68, 8, true, false, false, false, 0},
                                                 {"softmax_k6_128", 128, 6, false, false, false, false, 0},
                                                 // k > 8 at G <= 128: the probabilities through
                                                 // memory, then the k-round top-k
                                                 {"softmax_k10_40", 40, 10, false, false, false, false, 0},
                                                 // k 5 to 8 on rows of 8 lanes (G <= 64): k = G = 8,
                                                 // each lane one group and 7 empty places; k 5 with
                                                 // 16-byte rows
                                                 {"softmax_k8_of_8", 8, 8, false, false, false, false, 0},
                                                 {"sigmoid_bias_k5_40", 40, 5, true, false, false, false, 0},
                                                 // 4 values a lane without 16-byte loads (G 30)
                                                 {"softmax_30", 30, 2, false, false, false, false, 0},
                                                 // keys with fewer than k finite in some rows (NaN
                                                 // ranked as -inf, -inf picked before empty places)
                                                 {"keys_nonfinite_16", 16, 4, false, true, false, false, 0},
                                                 // 301 rows: the last warp's rows partly past N
                                                 {"softmax_301_rows", 24, 2, false, false, false, false, 0, 301}}) {
    const int64_t N = g.N;
    c.push_back({"tokens_choose_logits_" + g.name, Tol::f32,
                 [=](Rng& r) {
                   Ins in{randn({N, g.G}, r, 2.f), randn({g.G}, r, 0.05f), randn({N, g.G}, r)};
                   if (g.name == "softmax_ties_100") {  // whole logits: equal probabilities across lanes and j
                     for (int64_t j = 0; j < N * g.G; ++j) in[0].f32()[j] = j < g.G ? 0.f : std::round(in[0].f32()[j]);
                   }
                   if (g.name == "keys_nonfinite_16") make_keys_nonfinite(in[2]);
                   return in;
                 },
                 [=](Ctx& x, const Ins&) { return Outs{fresh(x, {N, g.G})}; },
                 [=](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::TokensChooseParams p;
                   p.k = g.k;
                   p.capacity_factor = 1.f;
                   p.padded = g.padded;
                   p.dropless = g.dropless;
                   p.segment = g.segment;
                   if (g.sigmoid) {
                     p.renormalize = true;
                     p.priority = ops::SlotPriority::score;
                     p.selection_bias = &in[1];
                   }
                   if (g.keys) p.selection_keys = &in[2];
                   if (g.name == "softmax_ties_100") p.priority = ops::SlotPriority::score;  // top[i] observed
                   const ops::ScoreFn fn = g.sigmoid ? ops::ScoreFn::sigmoid : ops::ScoreFn::softmax;
                   ops::Route route, two;
                   ops::tokens_choose_logits(x, route, o[0], in[0], fn, p);
                   Tensor probs = out(x, {N, g.G});
                   ops::router_scores(x, probs, in[0], fn);
                   ops::tokens_choose(x, two, probs, p);
                   EXPECT_TRUE(bitwise_equal(probs.to(host_ctx()), o[0].to(host_ctx()))) << "probs";
                   for (const auto& [a, b] : {std::pair{&route.group, &two.group}, {&route.slot, &two.slot},
                                              {&route.weight, &two.weight}, {&route.count, &two.count},
                                              {&route.offset, &two.offset}})
                     EXPECT_TRUE(bitwise_equal(a->to(host_ctx()), b->to(host_ctx()))) << "the route";
                   EXPECT_EQ(route.host_offset, two.host_offset);
                   EXPECT_EQ(route.capacity, two.capacity);
                   EXPECT_EQ(route.dropped, two.dropped);
                   // The gating alone (tokens_gate): into poisoned outputs, the
                   // probabilities, groups and weights of the route's call, bit for bit.
                   Tensor gp = out(x, {N, g.G}), gg = out(x, {N * g.k}, DType::i32), gw = out(x, {N * g.k});
                   for (Tensor* t : {&gp, &gg, &gw}) poison(*t, x);
                   ops::tokens_gate(x, gg, gw, gp, in[0], fn, p);
                   for (const auto& [a, b] : {std::pair{&gp, &o[0]}, {&gg, &route.group}, {&gw, &route.weight}})
                     EXPECT_TRUE(bitwise_equal(a->to(host_ctx()), b->to(host_ctx()))) << "tokens_gate";
                   // Without the probabilities kept (a router that recomputes them):
                   // the same groups and weights, and the same route.
                   Tensor none;
                   for (Tensor* t : {&gg, &gw}) poison(*t, x);
                   ops::tokens_gate(x, gg, gw, none, in[0], fn, p);
                   for (const auto& [a, b] : {std::pair{&gg, &route.group}, {&gw, &route.weight}})
                     EXPECT_TRUE(bitwise_equal(a->to(host_ctx()), b->to(host_ctx()))) << "tokens_gate, no probs";
                   ops::Route three;
                   ops::tokens_choose_logits(x, three, none, in[0], fn, p);
                   for (const auto& [a, b] : {std::pair{&route.group, &three.group}, {&route.slot, &three.slot},
                                              {&route.weight, &three.weight}, {&route.offset, &three.offset}})
                     EXPECT_TRUE(bitwise_equal(a->to(host_ctx()), b->to(host_ctx()))) << "the route, no probs";
                 }});
  }
  // Gating with a group limit (the probabilities first, then the limited
  // keys: ops/routing.cc composes it on every backend): the probabilities
  // against the CPU (class F), and on each backend tokens_gate's groups and
  // weights, with and without the probabilities kept, bit for bit the route's.
  c.push_back({"tokens_choose_logits_group_limit", Tol::f32,
               [](Rng& r) { return Ins{randn({300, 64}, r, 2.f), randn({64}, r, 0.05f)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {300, 64})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::TokensChooseParams p;
                 p.k = 4;
                 p.capacity_factor = 1.f;
                 p.renormalize = true;
                 p.selection_bias = &in[1];
                 p.group_limit.groups = 8;
                 p.group_limit.kept = 3;
                 ops::Route route;
                 ops::tokens_choose_logits(x, route, o[0], in[0], ops::ScoreFn::sigmoid, p);
                 Tensor none, gg = out(x, {300 * 4}, DType::i32), gw = out(x, {300 * 4});
                 for (Tensor* probs : {&o[0], &none}) {
                   for (Tensor* t : {&gg, &gw}) poison(*t, x);
                   Tensor kept = probs->defined() ? out(x, {300, 64}) : Tensor();
                   ops::tokens_gate(x, gg, gw, kept, in[0], ops::ScoreFn::sigmoid, p);
                   for (const auto& [a, b] : {std::pair{&gg, &route.group}, {&gw, &route.weight}})
                     EXPECT_TRUE(bitwise_equal(a->to(host_ctx()), b->to(host_ctx()))) << "tokens_gate";
                 }
               }});
  // The router's backward in one pass (ops::router_backward) and the routing
  // sums from the logits: the route chosen from exact probabilities (the
  // same on both backends), the logits' own scores recomputed. On CUDA up
  // to 128 groups and k 8 one kernel with the row in registers (G 24 and 64
  // with 16-byte rows, 70 without, 100 at 16 lanes a row), past that the
  // sequence of ops (G 130; k 9); softmax and sigmoid, renormalised or not,
  // with and without the losses.
  struct RouterBackwardCase {
    std::string name;
    int64_t G;
    int k;
    bool sigmoid, renorm;
    float alpha, beta;
    int64_t N = 300;
  };
  for (const RouterBackwardCase& g : std::vector<RouterBackwardCase>{{"softmax_64", 64, 2, false, false, 0.3f, 0.2f},
                                                                     {"sigmoid_renorm_24", 24, 3, true, true, 0.3f, 0.2f},
                                                                     {"softmax_renorm_70", 70, 1, false, true, 0.1f, 0.f},
                                                                     {"sigmoid_100", 100, 8, true, false, 0.f, 0.5f},
                                                                     {"softmax_130", 130, 2, false, false, 0.3f, 0.2f},
                                                                     {"softmax_k9_40", 40, 9, false, true, 0.3f, 0.2f},
                                                                     // 8 lanes of 2 and of 1 values (G 12, 6): empty
                                                                     // lanes, a pick's probability by shuffle
                                                                     {"softmax_renorm_12", 12, 4, false, true, 0.3f, 0.2f},
                                                                     {"sigmoid_6", 6, 2, true, false, 0.3f, 0.2f},
                                                                     // G 30: 8 lanes of 4 values without 16-byte loads
                                                                     {"softmax_30", 30, 2, false, false, 0.3f, 0.2f},
                                                                     // G 300: routing_sums' threads over several columns
                                                                     {"softmax_300", 300, 2, false, false, 0.3f, 0.2f},
                                                                     // 301 rows: the last warp's rows partly past N
                                                                     {"softmax_64_301_rows", 64, 2, false, false, 0.3f, 0.2f, 301}}) {
    const int64_t N = g.N;
    c.push_back({"router_backward_" + g.name, Tol::f32,
                 [=](Rng& r) { return Ins{randn({N, g.G}, r, 2.f), probs_of({N, g.G}, r), randn({N * g.k}, r)}; },
                 [=](Ctx& x, const Ins&) {
                   return Outs{fresh(x, {N, g.G}), fresh(x, {ops::routing_sums_size(g.G)})};
                 },
                 [=](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::TokensChooseParams p;
                   p.k = g.k;
                   p.capacity_factor = 0.9f;
                   p.renormalize = g.renorm;
                   ops::Route route;
                   ops::tokens_choose(x, route, in[1], p);
                   const ops::ScoreFn fn = g.sigmoid ? ops::ScoreFn::sigmoid : ops::ScoreFn::softmax;
                   Tensor sums = out(x, {ops::routing_sums_size(g.G)}, DType::f64);
                   ops::routing_sums_logits(x, sums, in[0], fn, route);
                   ops::router_backward(x, o[0], {in[0], fn, route, in[2], g.renorm, &sums, g.alpha, g.beta});
                   std::vector<float> f32;
                   for (double v : sums.to_vector<double>()) f32.push_back(static_cast<float>(v));
                   put(x, o[1], f32);
                 }});
  }
  // The budget step after capacity, batch and causal per run of 10 items.
  for (bool causal : {false, true}) {
    c.push_back({std::string("apply_budget") + (causal ? "_causal" : ""), Tol::exact,
                 [](Rng& r) { return Ins{probs_of({40, 6}, r)}; },
                 [](Ctx& x, const Ins&) { return route_outputs(x, 40, 2, 6); },
                 [causal](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::Route route;
                   ops::TokensChooseParams p;
                   p.k = 2;
                   p.capacity_factor = 1.1f;
                   ops::tokens_choose(x, route, in[0], p);
                   ops::BudgetParams b;
                   b.cost = {0.25f, 0.25f, 0.5f, 1.f, 2.f, 2.f};
                   b.budget = 1.5;
                   b.causal = causal;
                   b.segment = causal ? 10 : 0;
                   ops::apply_budget(x, route, in[0], b);
                   put_route(x, route, o);
                 }});
  }
  c.push_back({"update_balance_bias", Tol::exact, [](Rng& r) { return Ins{randn({7}, r, 0.01f)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {7})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 o[0].copy_from(in[0], x);
                 const Tensor load = Tensor::from_host(std::vector<double>{3, 9, 4, 4, 0, 12, 3}).to(x);
                 ops::update_balance_bias(x, o[0], load, 1e-3f);
               }});
  c.push_back({"update_balance_bias_rows", Tol::exact, [](Rng& r) { return Ins{randn({7}, r, 0.01f)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {7})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 o[0].copy_from(in[0], x);
                 // three micro-batches' loads: sums 7 12 9 7 3 12 6 (mean 8); no row alone gives those signs
                 const std::vector<double> rows = {3, 9, 4, 4, 0, 12, 3,  //
                                                   4, 0, 5, 0, 3, 0,  0,  //
                                                   0, 3, 0, 3, 0, 0,  3};
                 const Tensor load = Tensor::from_host(rows).reshape({3, 7}).to(x);
                 ops::update_balance_bias(x, o[0], load, 1e-3f);
               }});
}

}  // namespace sy::op_test
