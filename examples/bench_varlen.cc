// The varlen ladder of bench_varlen.h: the layouts on the host, the inputs
// drawn on the device.
#include "examples/bench_varlen.h"

#include <algorithm>
#include <memory>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "ops/attention.h"
#include "ops/cuda/attention_varlen.h"
#include "ops/elementwise.h"
#include "ops/random.h"

namespace sy::bench {
namespace {

// A bf16 tensor of normal values drawn on ctx.
Tensor random_bf16(Ctx& ctx, Shape s, uint64_t seed) {
  Tensor f = Tensor::empty(s, DType::f32, ctx), b = Tensor::empty(s, DType::bf16, ctx);
  ops::random_normal(ctx, f, RandomKey{seed, 0, 0, 0}, 1.f);
  ops::to_bf16(ctx, b, f);
  return b;
}

// One varlen layout on the device, its VarlenAttention, and its pairs.
struct Layout {
  Tensor seg, is_query, is_key, key_len, pos;
  ops::cuda::VarlenAttention v;
  double pairs = 0;
};

// S segments of n rows, every row a query and a key (causal by index).
Layout index_layout(Ctx& ctx, int64_t S, int64_t n, int64_t D) {
  std::vector<int32_t> seg(S + 1), ones(S * n, 1);
  for (int64_t b = 0; b <= S; ++b) seg[b] = static_cast<int32_t>(b * n);
  Layout l;
  l.seg = Tensor::from_host(seg).to(ctx);
  l.is_query = Tensor::from_host(ones).to(ctx);
  l.is_key = l.is_query;
  l.v = {S, n, S * n, D, 1, l.seg.data<int32_t>(), l.is_query.data<int32_t>(), l.is_key.data<int32_t>(), nullptr};
  l.pairs = double(S) * n * (n + 1) / 2;
  return l;
}

// S segments of m keys then m queries: 2 m positions dealt at random to the
// two sides, each side ascending (a query sees the keys at or before it).
Layout split_layout(Ctx& ctx, int64_t S, int64_t m, int64_t D, bool all_flagged, uint64_t seed) {
  std::vector<int32_t> seg(S + 1), key_len(S, static_cast<int32_t>(m)), is_query(S * 2 * m), is_key(S * 2 * m),
      pos(S * 2 * m);
  Rng rng(seed);
  std::vector<int32_t> p(2 * m);
  double pairs = 0;
  for (int64_t b = 0; b < S; ++b) {
    seg[b] = static_cast<int32_t>(b * 2 * m);
    std::iota(p.begin(), p.end(), 0);
    for (int64_t i = 2 * m - 1; i > 0; --i) std::swap(p[i], p[rng.between(0, i)]);
    std::sort(p.begin(), p.begin() + m);
    std::sort(p.begin() + m, p.end());
    for (int64_t r = 0; r < 2 * m; ++r) {
      const int64_t row = b * 2 * m + r;
      pos[row] = p[r];
      is_key[row] = r < m;
      is_query[row] = r >= m;
    }
    for (int64_t q = m; q < 2 * m; ++q)
      pairs += static_cast<double>(std::upper_bound(p.begin(), p.begin() + m, p[q]) - p.begin());
  }
  seg[S] = static_cast<int32_t>(S * 2 * m);
  Layout l;
  l.seg = Tensor::from_host(seg).to(ctx);
  l.is_query = Tensor::from_host(is_query).to(ctx);
  l.is_key = Tensor::from_host(is_key).to(ctx);
  l.key_len = Tensor::from_host(key_len).to(ctx);
  l.pos = Tensor::from_host(pos).to(ctx);
  l.v = {S, 2 * m, S * 2 * m, D, 1, l.seg.data<int32_t>(), l.is_query.data<int32_t>(), l.is_key.data<int32_t>(),
         l.key_len.data<int32_t>()};
  l.v.pos = l.pos.data<int32_t>();
  l.v.all_flagged = all_flagged;
  l.pairs = pairs;
  return l;
}

// The buffers every case shares, and each layout.
struct LadderState {
  Ctx& ctx;
  Tensor qkv, dout, out, lse, dqkv;
  Tensor d_qkv, d_dout, d_out, d_lse, d_dqkv;  // the dense step's (S, n, .) views of them
  Layout index, split, split_ok;
};

}  // namespace

std::vector<VarlenLadderCase> varlen_ladder(Ctx& ctx, const VarlenLadderShape& s, uint64_t seed) {
  SY_CHECK(!ctx.device.is_cpu(), "bench_varlen: a CUDA context is needed");
  const int64_t S = s.segments, m = s.side, D = s.head_dim, n = 2 * m, rows = S * n;
  auto st = std::make_shared<LadderState>(LadderState{ctx});
  st->qkv = random_bf16(ctx, {rows, 3 * D}, seed);
  st->dout = random_bf16(ctx, {rows, D}, seed + 1);
  st->out = Tensor::empty({rows, D}, DType::bf16, ctx);
  st->lse = Tensor::empty({1, rows}, DType::f32, ctx);
  st->dqkv = Tensor::zeros({rows, 3 * D}, DType::bf16, ctx);
  st->d_qkv = st->qkv.reshape({S, n, 3 * D}), st->d_dqkv = st->dqkv.reshape({S, n, 3 * D});
  st->d_out = st->out.reshape({S, n, D}), st->d_dout = st->dout.reshape({S, n, D});
  st->d_lse = st->lse.reshape({S, 1, n});
  st->index = index_layout(ctx, S, n, D);
  st->split = split_layout(ctx, S, m, D, true, seed + 2);
  st->split_ok = split_layout(ctx, S, m, D, false, seed + 2);

  std::vector<VarlenLadderCase> out;
  auto both = [&](const std::string& step, const std::string& shape, const std::string& note, double pairs,
                  std::function<void()> fwd, std::function<void()> bwd) {
    out.push_back({"varlen_ladder_" + step + "_fwd", shape, note, 4.0 * D * pairs, fwd});
    out.push_back({"varlen_ladder_" + step + "_fwd_bwd", shape, note, 14.0 * D * pairs, [fwd, bwd] {
                     fwd();
                     bwd();
                   }});
  };
  const std::string segs = "S" + std::to_string(S) + " ";
  const ops::AttentionShape a{S, n, D, 1};  // the dense kernel over the same rows as S sequences of n
  both("dense", segs + "T" + std::to_string(n) + " D" + std::to_string(D),
       "ops::attention_*, causal: grid (tiles, 1, S), no work list", double(S) * n * (n + 1) / 2,
       [st, a] { ops::attention_forward(st->ctx, {st->d_out, st->d_lse, st->d_qkv, a}); },
       [st, a] { ops::attention_backward(st->ctx, {st->d_dqkv, st->d_dout, st->d_qkv, st->d_out, st->d_lse, a}); });
  auto varlen = [&](const std::string& step, const Layout* l, const std::string& shape, const std::string& note) {
    // (l is one of *st's layouts: st, captured, keeps it)
    both(step, shape, note, l->pairs,
         [st, l] { ops::cuda::varlen_attention_forward(st->ctx, l->v, st->qkv, st->out, st->lse); },
         [st, l] { ops::cuda::varlen_attention_backward(st->ctx, l->v, st->dqkv, st->dout, st->qkv, st->out, st->lse); });
  };
  varlen("index", &st->index, segs + "len " + std::to_string(n) + " D" + std::to_string(D),
         "varlen, every row query and key: work list, MemberMask by index");
  const std::string split_shape = segs + std::to_string(m) + " keys + " + std::to_string(m) + " queries D" +
                                  std::to_string(D);
  varlen("split", &st->split, split_shape,
         "routed causal's packing: positions, all_flagged (spans, full tiles)");
  varlen("split_ok", &st->split_ok, split_shape, "the same, ok() pair by pair (no all_flagged)");
  return out;
}

}  // namespace sy::bench
