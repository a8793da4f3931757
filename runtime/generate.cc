#include "runtime/generate.h"

#include "core/error.h"
#include "core/philox.h"
#include "ops/elementwise.h"
#include "ops/finite.h"
#include "ops/routing.h"

namespace sy {

namespace {
// A MoE capacity that can bind (C below the tokens routed): C = ceil(cf k N /
// E) is >= N for every N when cf k >= E, and moe.min_capacity >= seq_len
// holds a whole window.
bool capacity_can_bind(const Config& cfg) {
  const auto& e = cfg.moe();
  return e.num_experts() > 0 && !e.dropless() && e.capacity_factor_eval() * e.top_k() < e.num_experts() &&
         e.min_capacity() < cfg.model().seq_len();
}
}  // namespace

bool causal(const Config& cfg, std::string* why) {
  auto no = [&](const char* reason) {
    if (why) *why = reason;
    return false;
  };
  const auto& e = cfg.moe();
  if (e.num_experts() > 0 && e.router() == switchyard::MoeConfig::EXPERT_CHOICE)
    return no("moe.router EXPERT_CHOICE looks at the whole window");
  if (e.num_experts() > 0 && !e.dropless() && e.slot_priority() == switchyard::MoeConfig::SCORE)
    return no("moe.slot_priority SCORE lets later tokens take an expert's slots");
  if (e.num_experts() > 0 && e.budget_mode() == switchyard::MoeConfig::HARD)
    return no("moe.budget_mode HARD drops by score over the whole window (HARD_CAUSAL is causal)");
  const bool capacity_binds = capacity_can_bind(cfg);
  if (capacity_binds && e.top_k() > 1 && e.slot_priority() != switchyard::MoeConfig::TOKEN_ORDER)
    return no("moe.top_k >= 2 under a capacity that can bind (moe.capacity_factor_eval x top_k < num_experts): "
              "every token's first choice takes its slot before any second choice, so later positions can fill an "
              "expert first (moe.slot_priority TOKEN_ORDER serves token by token)");
  // A depth-routed block runs its layers on the tokens it keeps: a capacity
  // there is a fraction of how many it keeps, later positions included.
  const auto& at = cfg.attention();
  for (int l = 0; l < cfg.model().n_layers(); ++l) {
    if (!is_depth_routed(cfg.depth(), l)) continue;
    if (capacity_binds && is_moe_layer(e, l))
      return no("a depth-routed block's MoE capacity counts the tokens the block keeps, later ones included");
    if (is_sparse_attention_layer(at, l, cfg.model().n_layers()) &&
        at.kind() == switchyard::AttentionConfig::ROUTED && !at.dropless())
      return no("a depth-routed block's routed-attention cluster capacity (attention.dropless false) counts the "
                "tokens the block keeps, later ones included");
  }
  if (cfg.attention().kind() == switchyard::AttentionConfig::ROUTED &&
      cfg.attention().assignment() == switchyard::AttentionConfig::BALANCED)
    return no("attention.assignment BALANCED looks at the whole window");
  if (cfg.depth().every_n_layers() > 0 && !cfg.depth().predictor_at_eval())
    return no("depth.predictor_at_eval false routes by top-k over the window");
  return true;
}

bool kv_cacheable(const Config& cfg, std::string* why) {
  auto no = [&](const char* reason) {
    if (why) *why = reason;
    return false;
  };
  if (!causal(cfg, why)) return false;
  if (cfg.precision() != switchyard::Config::FP32) return no("precision BF16 (the cache computes in fp32)");
  if (cfg.moe().num_experts() > 0 && cfg.moe().budget_mode() == switchyard::MoeConfig::HARD_CAUSAL)
    return no("moe.budget_mode HARD_CAUSAL spends a budget over the window's earlier tokens");
  return true;
}

namespace {
// The routes of the last forward's row `last` (the position whose next token
// was drawn), added to the generated tokens' routing.
void add_routing(Transformer& model, int64_t last, GenerationRouting& routing) {
  // Where this position went: a depth-routed block's MoE layer sees only
  // the kept tokens, in position order, so there `last` is its rank among
  // them. (Routes read on the host: copied there where the model runs on a GPU.)
  for (GenerationRouting::Depth& d : routing.depth) {
    ++d.tokens;
    d.kept += model.blocks()[d.layer].depth()->route().on_host().row(last) >= 0;
  }
  for (size_t m = 0; m < routing.moe.size(); ++m) {
    GenerationRouting::Moe& s = routing.moe[m];
    int64_t item = last;
    if (const DepthRouter* d = model.blocks()[s.layer].depth()) {
      const ops::Route dr = d->route().on_host();
      if (dr.row(last) < 0) continue;
      item = 0;
      for (int64_t t = 0; t < last; ++t) item += dr.row(t) >= 0;
    }
    const ops::Route r = model.moe_layers()[m].second->route().on_host();
    ++s.tokens;
    for (int64_t j = 0; j < r.k; ++j) {
      const int64_t a = item * r.k + j;
      const int32_t g = r.group.data<int32_t>()[a];
      if (g < 0) continue;
      ++s.load[g];
      s.dropped += r.row(a) < 0;
    }
  }
}
}  // namespace

Tensor next_token_probs(const Tensor& logits, float temperature) {
  SY_CHECK(logits.device().is_cpu() && logits.dim(0) == 1, "next_token_probs: one row of logits on the host");
  const int64_t V = logits.dim(1);
  Tensor scaled = logits;
  if (temperature > 0 && temperature != 1.f) {
    scaled = logits.clone(host_ctx());
    ops::scale(host_ctx(), scaled, 1.f / temperature);
  }
  Tensor row = Tensor::empty({1, V}, DType::f32, host_ctx());
  ops::router_scores(host_ctx(), row, scaled, ops::ScoreFn::softmax);
  return row.reshape({V});
}

int32_t draw_next(const Tensor& logits, const ops::SamplingParams& sp, float u) {
  // (The temperature is in the probabilities already.)
  ops::SamplingParams draw = sp;
  if (draw.temperature > 0) draw.temperature = 1.f;
  return ops::sample_token(host_ctx(), next_token_probs(logits, sp.temperature), draw, u);
}

std::vector<int32_t> generate_ids(Transformer& model, const Config& cfg, std::vector<int32_t> text, int n,
                                  const ops::SamplingParams& sp, uint64_t seed, GenerationRouting* routing,
                                  bool kv_cache, int32_t stop) {
  const int64_t T = cfg.model().seq_len(), V = cfg.model().vocab_size();
  SY_CHECK(!text.empty(), "generation needs a non-empty context");
  for (int32_t id : text) SY_CHECK(id >= 0 && id < V, "context id " << id << " outside the vocabulary of " << V);
  if (routing) {
    *routing = GenerationRouting{};
    for (const auto& [l, layer] : model.moe_layers())
      routing->moe.push_back({l, std::vector<int64_t>(cfg.moe().num_experts(), 0), 0, 0});
    for (size_t l = 0; l < model.blocks().size(); ++l)
      if (model.blocks()[l].depth()) routing->depth.push_back({static_cast<int>(l), 0, 0});
  }
  // With the cache: text[start + p] sits at position p, cached_n positions
  // are filled, and `next` holds the next-token logits of the last one.
  const bool cached = kv_cache && model.ctx().device.is_cpu() && kv_cacheable(cfg);
  KvCache cache;
  int64_t start = 0, cached_n = 0;
  Tensor next;
  auto fill = [&] {  // the context's tokens not yet cached
    while (start + cached_n < static_cast<int64_t>(text.size())) {
      next = model.decode(text[start + cached_n], cached_n, cache);
      ++cached_n;
    }
  };
  if (cached) {
    cache = model.new_cache();
    start = static_cast<int64_t>(text.size()) - std::min<int64_t>(static_cast<int64_t>(text.size()), T);
    fill();
  }
  for (int i = 0; i < n; ++i) {
    int64_t last = 0;  // the row of the last forward whose next token is drawn
    Tensor logits;
    if (cached) {
      logits = next;
    } else {
      const int64_t len = std::min<int64_t>(static_cast<int64_t>(text.size()), T);
      last = len - 1;
      Batch b;
      b.inputs.assign(T, 0);
      b.targets.assign(T, 0);
      for (int64_t t = 0; t < len; ++t)
        b.inputs[t] = text[text.size() - len + t];
      model.forward(b);
      logits = model.logits().rows(last, last + 1).to(host_ctx());
    }
    // A non-finite logit (weights or a context that overflow) would make
    // every probability NaN, and the draw would fall through to one fixed id:
    // text that looks generated. Said instead, with where.
    if (const int64_t bad = ops::count_nonfinite(host_ctx(), logits); bad > 0)
      throw Error("generation: the next-token logits after " + std::to_string(text.size()) + " tokens are not finite (" +
                  std::to_string(bad) + " of " + std::to_string(V) +
                  "): the model's weights, or this context, give a non-finite forward");
    const RandomKey key{seed, random_stream(RandomPurpose::sample), 0, 0};
    const float u = bits_to_uniform(random_bits(key, text.size()).v[0]);
    text.push_back(draw_next(logits, sp, u));
    if (routing) add_routing(model, last, *routing);
    if (text.back() == stop) break;
    if (!cached || i + 1 == n) continue;
    if (cached_n == T) {  // the window is full: rebuilt from its last T / 2 tokens
      start = static_cast<int64_t>(text.size()) - std::max<int64_t>(1, T / 2);
      cached_n = 0;
    }
    fill();
  }
  return text;
}

std::string generate(Transformer& model, const Config& cfg, const std::string& prompt, int n,
                     const ops::SamplingParams& sp, uint64_t seed, GenerationRouting* routing, bool kv_cache) {
  const std::string start = prompt.empty() ? std::string("\n") : prompt;
  std::vector<int32_t> ids;
  for (char c : start) ids.push_back(static_cast<unsigned char>(c));
  ids = generate_ids(model, cfg, std::move(ids), n, sp, seed, routing, kv_cache);
  std::string text;
  for (int32_t id : ids) text += static_cast<char>(id);
  return text;
}

}  // namespace sy
