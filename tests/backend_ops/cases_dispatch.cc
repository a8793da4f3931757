// Op cases: moving rows (dispatch, combine, depth gates) and the router
// losses (tests/backend_ops_test.cc).
#include "tests/backend_ops/harness.h"

namespace sy::op_test {

void add_dispatch_cases(std::vector<OpCase>& c) {
  // ---- moving rows ----
  c.push_back({"dispatch", Tol::exact, [](Rng& r) { return Ins{probs_of({30, 4}, r), randn({30, 12}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {48, 12}), acc(x, {30, 12})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::Route route;
                 ops::TokensChooseParams p;
                 p.k = 2;
                 p.capacity_factor = 0.75f;  // at most 12 rows per group, 48 in all: some dropped
                 ops::tokens_choose(x, route, in[0], p);
                 Tensor buf = out(x, {route.rows(), 12});
                 ops::dispatch_forward(x, buf, in[1], route);
                 Tensor rows = o[0].rows(0, route.rows());
                 rows.copy_from(buf, x);
                 Tensor zero = Tensor::zeros({48 - route.rows(), 12}, DType::f32, x);
                 Tensor rest = o[0].rows(route.rows(), 48);
                 rest.copy_from(zero, x);
                 ops::dispatch_backward(x, o[1], buf, route);
               }});
  // A padded route (k = 2, 19 rows a group: 76 rows for 60 assignments, so
  // rows unused, and drops where a group is chosen more than 19 times):
  // dispatch and combine_backward write every row over poison, the unused
  // ones (slot >= count[g]) 0; a bf16 buffer (or bf16 dout, its dweight the
  // f32 dout's) is the f32 one rounded, bit for
  // bit, written at an aligned base and at a view one row in (a bf16 row of
  // 12 or 260 values is 8 bytes past 16: the narrow path). D = 7 (a value a
  // lane), 12 and 260 (16-byte chunks, lanes with unequal counts of them).
  // dispatch_backward writing dx (o[4], over poison) gives the bits of
  // accumulating onto zeros; o[5] accumulates onto random values. o[3]:
  // bf16 values that are not the f32 ones rounded, and unused row values
  // that are not 0. (dweight, a warp dot on CUDA, is class F: the "combine" case.)
  for (int64_t D : {7, 12, 260}) {
    c.push_back({"dispatch_padded_" + std::to_string(D), Tol::exact,
                 [D](Rng& r) {
                   return Ins{probs_of({30, 4}, r), randn({30, D}, r), randn({30, D}, r), randn({30, D}, r)};
                 },
                 [D](Ctx& x, const Ins&) {
                   return Outs{fresh(x, {76, D}), fresh(x, {76, D}), fresh(x, {76, D}), fresh(x, {2}),
                               fresh(x, {30, D}), fresh(x, {30, D})};
                 },
                 [D](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::Route route;
                   ops::TokensChooseParams p;
                   p.k = 2;
                   p.capacity_factor = 1.25f;
                   p.padded = true;
                   ops::tokens_choose(x, route, in[0], p);
                   ASSERT_EQ(route.rows(), 76);
                   ops::dispatch_forward(x, o[0], in[1], route);
                   Tensor b16 = out(x, {76, D}, DType::bf16), b16_store = out(x, {77, D}, DType::bf16);
                   poison(b16, x);
                   poison(b16_store, x);
                   Tensor b16_view = b16_store.rows(1, 77);
                   ops::dispatch_forward(x, b16, in[1], route);
                   ops::dispatch_forward(x, b16_view, in[1], route);
                   ops::to_f32(x, o[1], b16);
                   Tensor dweight = out(x, {60});
                   ops::combine_backward(x, o[2], dweight, in[2], o[0], route);
                   // bf16 dout (bf16 mode's experts' operand), aligned and a row in; dweight as ever.
                   Tensor d16 = out(x, {76, D}, DType::bf16), d16_store = out(x, {77, D}, DType::bf16);
                   poison(d16, x);
                   poison(d16_store, x);
                   Tensor d16_view = d16_store.rows(1, 77), dweight16 = out(x, {60}), dweight16_view = out(x, {60});
                   ops::combine_backward(x, d16, dweight16, in[2], o[0], route);
                   ops::combine_backward(x, d16_view, dweight16_view, in[2], o[0], route);
                   EXPECT_TRUE(bitwise_equal(dweight16.to(host_ctx()), dweight.to(host_ctx())) &&
                               bitwise_equal(dweight16_view.to(host_ctx()), dweight.to(host_ctx())))
                       << "dweight with a bf16 dout differs from dweight with an f32 one";
                   ops::dispatch_backward(x, o[4], o[2], route, /*accumulate=*/false);
                   Tensor onto_zeros = Tensor::zeros({30, D}, DType::f32, x);
                   ops::dispatch_backward(x, onto_zeros, o[2], route);
                   EXPECT_TRUE(bitwise_equal(o[4].to(host_ctx()), onto_zeros.to(host_ctx())))
                       << "dx written is not dx accumulated onto zeros";
                   o[5].copy_from(in[3], x);
                   ops::dispatch_backward(x, o[5], o[2], route);
                   const std::vector<int32_t> count = route.count.to_vector<int32_t>();
                   const Tensor b32 = o[0].to(host_ctx()), dout = o[2].to(host_ctx());
                   double wrong = 0, nonzero = 0;
                   int64_t unused = 0;
                   // dispatch's bf16 buffers against its f32 one, combine_backward's bf16 douts against its f32 one
                   for (const auto& [t16, t32] : {std::pair{b16, b32}, std::pair{b16_view, b32}, std::pair{d16, dout},
                                                  std::pair{d16_view, dout}}) {
                     const Tensor h16 = t16.to(host_ctx());
                     const bf16_t* v16 = h16.data<bf16_t>();
                     for (int64_t e = 0; e < 76 * D; ++e) wrong += v16[e].bits != f32_to_bf16(t32.f32()[e]);
                     for (int64_t row = 0; row < 76; ++row) {
                       if (row % 19 < count[row / 19]) continue;
                       ++unused;
                       for (int64_t c = 0; c < D; ++c)
                         nonzero += (b32.f32()[row * D + c] != 0.f) + (dout.f32()[row * D + c] != 0.f) +
                                    (v16[row * D + c].bits != 0);
                     }
                   }
                   EXPECT_GT(unused, 0) << "the route leaves no row unused: nothing tested";
                   EXPECT_EQ(wrong, 0) << "bf16 buffer or dout values that are not the f32 ones rounded";
                   EXPECT_EQ(nonzero, 0) << "unused rows' values that are not 0";
                   put(x, o[3], std::vector<float>{static_cast<float>(wrong), static_cast<float>(nonzero)});
                 }});
  }
  // Positions of dispatched rows: a depth route (groups choose, 4 of every 10
  // items) and a tokens-choose route with drops (k = 2, sequences of 10).
  // pad_to_largest (ops/routing.h): a counted route, cut by a hard budget
  // (apply_budget renumbers its offsets), re-laid at its largest count's
  // stride (on CUDA the offsets uploaded, queued), then dispatch and combine
  // on it: each group's rows at g M, padding rows 0 (o[0], the buffer's rows,
  // zeros past them), the offsets (o[1]) and the combined rows.
  c.push_back({"pad_to_largest_dispatch", Tol::f32, [](Rng& r) { return Ins{probs_of({40, 4}, r), randn({40, 12}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {160, 12}), fresh(x, {5}), fresh(x, {40, 12})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::Route route;
                 ops::TokensChooseParams p;
                 p.k = 2;
                 p.capacity_factor = 2.f;  // capacity 40; the largest count rounded up to 8 below it
                 ops::tokens_choose(x, route, in[0], p);
                 ops::BudgetParams b;
                 b.cost.assign(4, 1.f);
                 b.budget = 1.5;  // 2 a token: a quarter of the assignments dropped
                 ops::apply_budget(x, route, in[0], b);
                 ASSERT_GT(route.budget_dropped, 0);
                 ops::pad_to_largest(x, route, 8);
                 ASSERT_TRUE(route.padded);
                 ASSERT_LT(route.capacity, 40) << "the stride is the capacity: the case would not tell them apart";
                 Tensor buf = out(x, {route.rows(), 12});
                 ops::dispatch_forward(x, buf, in[1], route);
                 o[0].copy_from(Tensor::zeros({160, 12}, DType::f32, x), x);
                 Tensor head = o[0].rows(0, route.rows());
                 head.copy_from(buf, x);
                 std::vector<float> offsets;
                 for (int32_t v : route.offset.to_vector<int32_t>()) offsets.push_back(static_cast<float>(v));
                 put(x, o[1], offsets);
                 ops::combine_forward(x, o[2], buf, route);
               }});
  c.push_back({"dispatch_positions", Tol::exact, [](Rng& r) { return Ins{randn({30, 1}, r), probs_of({30, 4}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {12}, DType::i32), fresh(x, {48}, DType::i32)}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::Route depth;
                 ops::groups_choose(x, depth, in[0], 4, 10);
                 ops::dispatch_positions(x, o[0], depth, 10);
                 ops::Route route;
                 ops::TokensChooseParams p;
                 p.k = 2;
                 p.capacity_factor = 0.75f;  // at most 12 rows per group, 48 in all: some dropped
                 ops::tokens_choose(x, route, in[1], p);
                 Tensor pos = out(x, {route.rows()}, DType::i32);
                 ops::dispatch_positions(x, pos, route, 10);
                 Tensor rows = o[1].rows(0, route.rows());
                 rows.copy_from(pos, x);
                 Tensor none = Tensor::zeros({48 - route.rows()}, DType::i32, x);
                 Tensor rest = o[1].rows(route.rows(), 48);
                 rest.copy_from(none, x);
               }});
  // D 12 (combine_rows<4>) and D 7 (D % 4 != 0: ops/cuda/dispatch.cu's
  // combine_rows<1>, and the backward's <1>).
  for (const int64_t D : {12, 7}) {
    c.push_back({D == 12 ? "combine" : "combine_d" + std::to_string(D), Tol::f32,
                 [D](Rng& r) { return Ins{probs_of({30, 4}, r), randn({30, D}, r), randn({30, D}, r)}; },
                 [D](Ctx& x, const Ins&) { return Outs{fresh(x, {30, D}), fresh(x, {30, D}), fresh(x, {60})}; },
                 [D](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::Route route;
                   ops::TokensChooseParams p;
                   p.k = 2;
                   p.capacity_factor = 0.75f;
                   ops::tokens_choose(x, route, in[0], p);
                   Tensor buf = out(x, {route.rows(), D});
                   ops::dispatch_forward(x, buf, in[1], route);
                   ops::combine_forward(x, o[0], buf, route);
                   Tensor dout = out(x, {route.rows(), D});
                   ops::combine_backward(x, dout, o[2], in[2], buf, route);
                   Tensor dx = Tensor::zeros({30, D}, DType::f32, x);
                   ops::dispatch_backward(x, dx, dout, route);
                   o[1].copy_from(dx, x);
                 }});
  }
  c.push_back({"residual_combine", Tol::f32,
               // router scores, z (rows), x, dy, d(budget loss)
               [](Rng& r) { return Ins{randn({32, 1}, r), randn({32, 10}, r), randn({32, 10}, r), randn({32, 10}, r), randn({32}, r)}; },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {32, 10}), acc(x, {32, 10}), fresh(x, {32}), fresh(x, {32}), fresh(x, {4}), fresh(x, {32})};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::Route route;
                 ops::groups_choose(x, route, in[0], 3, 8);  // 3 of every 8 items
                 Tensor s = out(x, {32}), w = out(x, {32});
                 ops::sigmoid(x, s, in[0].reshape({32}));
                 ops::depth_gate_forward(x, w, s, route, false);
                 Tensor z = in[1].rows(0, route.rows());
                 ops::residual_combine_forward(x, o[0], in[2], z, w, route);
                 Tensor dz = out(x, {route.rows(), 10});
                 ops::residual_combine_backward(x, o[1], dz, o[2], in[3], in[2], z, w, route);
                 ops::depth_gate_backward(x, o[3], o[2], in[4], s, route, true);
                 // The statistics land in the middle of a larger device buffer; its ends keep their -7.
                 Tensor buf = out(x, {4}, DType::f64);
                 put(x, buf, std::vector<double>{-7, -7, -7, -7});
                 Tensor st = buf.rows(1, 3);
                 ops::predictor_loss(x, o[5], st, s, route, 0.5f);
                 std::vector<float> f32;
                 for (double v : buf.to_vector<double>()) f32.push_back(static_cast<float>(v));
                 put(x, o[4], f32);
               }});
  // residual_combine's flags flipped: ops/cuda/depth_gate.cu's gate_forward
  // straight-through (w 1 where chosen) and gate_backward without it (ds).
  c.push_back({"depth_gate_modes", Tol::f32,
               // router scores, z (rows), x, dy, d(budget loss)
               [](Rng& r) { return Ins{randn({32, 1}, r), randn({32, 10}, r), randn({32, 10}, r), randn({32, 10}, r), randn({32}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {32}), fresh(x, {32, 10}), acc(x, {32, 10}), fresh(x, {32}), fresh(x, {32})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::Route route;
                 ops::groups_choose(x, route, in[0], 3, 8);
                 Tensor s = out(x, {32});
                 ops::sigmoid(x, s, in[0].reshape({32}));
                 ops::depth_gate_forward(x, o[0], s, route, true);
                 Tensor z = in[1].rows(0, route.rows());
                 ops::residual_combine_forward(x, o[1], in[2], z, o[0], route);
                 Tensor dz = out(x, {route.rows(), 10});
                 ops::residual_combine_backward(x, o[2], dz, o[3], in[3], in[2], z, o[0], route);
                 ops::depth_gate_backward(x, o[4], o[3], in[4], s, route, false);
               }});
  // ---- router losses ----
  c.push_back({"routing_sums_and_balance", Tol::f32, [](Rng& r) { return Ins{probs_of({48, 5}, r)}; },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {ops::routing_sums_size(5)}), acc(x, {48, 5}), acc(x, {48, 5}), fresh(x, {2})};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::Route route;
                 ops::TokensChooseParams p;
                 p.k = 2;
                 p.capacity_factor = 0.9f;
                 ops::tokens_choose(x, route, in[0], p);
                 ops::BudgetParams b;  // some budget drops (slot -2) besides the capacity drops
                 b.cost = {1.f, 0.5f, 2.f, 1.f, 0.25f};
                 b.budget = 1.5;
                 ops::apply_budget(x, route, in[0], b);
                 Tensor sums = Tensor::empty({ops::routing_sums_size(5)}, DType::f64, x);
                 ops::routing_sums(x, sums, in[0], route, 5, 45);
                 std::vector<float> f32;
                 for (double v : sums.to_vector<double>()) f32.push_back(static_cast<float>(v));
                 put(x, o[0], f32);
                 // the values side by side in one device buffer, read once
                 Tensor values = out(x, {2}, DType::f64), lb = values.rows(0, 1), grouped = values.rows(1, 2);
                 ops::load_balance_loss(x, o[1], lb, sums, 0.01f);
                 ops::load_balance_loss_grouped(x, o[2], grouped, in[0], route, 12, 0.02f);
                 std::vector<float> v;
                 for (double d : values.to_vector<double>()) v.push_back(static_cast<float>(d));
                 put(x, o[3], v);
               }});
  // More than 256 items: ops/cuda/router_loss.cu's routing_sums in 19
  // stage-1 blocks (chunks of 32 items), then its second stage.
  c.push_back({"routing_sums_600_items", Tol::f32, [](Rng& r) { return Ins{probs_of({600, 5}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {ops::routing_sums_size(5)}), acc(x, {600, 5}), fresh(x, {1})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::Route route;
                 ops::TokensChooseParams p;
                 p.k = 2;
                 p.capacity_factor = 0.9f;
                 ops::tokens_choose(x, route, in[0], p);
                 Tensor sums = Tensor::empty({ops::routing_sums_size(5)}, DType::f64, x);
                 ops::routing_sums(x, sums, in[0], route);
                 std::vector<float> f32;
                 for (double v : sums.to_vector<double>()) f32.push_back(static_cast<float>(v));
                 put(x, o[0], f32);
                 Tensor value = out(x, {1}, DType::f64);
                 ops::load_balance_loss(x, o[1], value, sums, 0.01f);
                 put(x, o[2], std::vector<float>{static_cast<float>(value.to_vector<double>()[0])});
               }});
  c.push_back({"z_and_budget_loss", Tol::f32, [](Rng& r) { return Ins{randn({50, 6}, r, 3.f), probs_of({50, 6}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{acc(x, {50, 6}), acc(x, {50, 6}), fresh(x, {5})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 // The values (z; L_b, C) in the middle of a larger device buffer; its ends keep their -7.
                 Tensor buf = out(x, {5}, DType::f64);
                 put(x, buf, std::vector<double>{-7, -7, -7, -7, -7});
                 Tensor z = buf.rows(1, 2), value = buf.rows(2, 4);
                 ops::z_loss(x, o[0], z, in[0], 0.01f);
                 ops::budget_loss(x, o[1], value, in[1], {1.f, 2.f, 0.5f, 1.f, 3.f, 1.f}, 0.9f, 0.1f);
                 std::vector<float> f32;
                 for (double v : buf.to_vector<double>()) f32.push_back(static_cast<float>(v));
                 put(x, o[2], f32);
               }});
  // ops/cuda/router_loss.cu's budget loss without costs (cost == nullptr: all
  // ones; C = 1 > B 0.5, active) and inactive (C <= B 5: budget_gradient's
  // early return, dprobs untouched, L_b 0).
  c.push_back({"budget_loss_no_cost", Tol::f32, [](Rng& r) { return Ins{probs_of({50, 6}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{acc(x, {50, 6}), acc(x, {50, 6}), fresh(x, {4})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 Tensor values = out(x, {4}, DType::f64), a = values.rows(0, 2), b = values.rows(2, 4);
                 ops::budget_loss(x, o[0], a, in[0], {}, 0.5f, 0.1f);
                 ops::budget_loss(x, o[1], b, in[0], budget_case_costs(), 5.f, 0.1f);
                 std::vector<float> f32;
                 for (double v : values.to_vector<double>()) f32.push_back(static_cast<float>(v));
                 put(x, o[2], f32);
               }});
  c.push_back({"realized_budget_loss", Tol::f32, [](Rng& r) { return Ins{probs_of({50, 6}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{acc(x, {50, 6}), fresh(x, {2})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const std::vector<float> cost = budget_case_costs();
                 const ops::Route route = budget_case_route(x, in[0]);
                 double S = 0;
                 ops::RealizedBudgetArgs a{cost};
                 a.realized = 2.4, a.budget = 1.9f, a.lambda = 0.3f, a.surrogate = &S;
                 const float l = ops::realized_budget_loss(x, o[0], in[0], route, a);
                 put(x, o[1], std::vector<float>{l, static_cast<float>(S)});
               }});
  // R from the routing sums on the device (the router's way): active (B below
  // R) and not (B above R, dprobs untouched), the values side by side.
  c.push_back({"realized_budget_loss_from_sums", Tol::f32, [](Rng& r) { return Ins{probs_of({50, 6}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{acc(x, {50, 6}), acc(x, {50, 6}), fresh(x, {2})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const std::vector<float> cost = budget_case_costs();
                 const ops::Route route = budget_case_route(x, in[0]);  // budget drops: counted in R
                 Tensor sums = Tensor::empty({ops::routing_sums_size(6)}, DType::f64, x);
                 ops::routing_sums(x, sums, in[0], route);
                 Tensor values = out(x, {2}, DType::f64);
                 for (int i = 0; i < 2; ++i) {
                   Tensor v = values.rows(i, i + 1);
                   ops::RealizedBudgetArgs a{cost};
                   a.budget = i == 0 ? 0.5f : 100.f, a.lambda = 0.3f, a.sums = &sums, a.value = &v;
                   EXPECT_EQ(ops::realized_budget_loss(x, o[i], in[0], route, a), 0.f);
                 }
                 std::vector<float> f32;
                 for (double d : values.to_vector<double>()) f32.push_back(static_cast<float>(d));
                 put(x, o[2], f32);
               }});
}

}  // namespace sy::op_test
