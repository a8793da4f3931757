// The memory a training run needs, against what its machine or GPU has
// (runtime/config.h: estimate_memory, training_memory, check_memory).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "core/device.h"
#include "core/error.h"
#include "runtime/config.h"
#include "runtime/moe_layer.h"

namespace sy {

MemoryEstimate estimate_memory(const Config& cfg, int world) {
  const auto& m = cfg.model();
  const auto& e = cfg.moe();
  const double C = m.d_model(), F = m.ffn_hidden(), T = m.seq_len(), V = m.vocab_size(), H = m.n_heads();
  const int L = m.n_layers();
  // (activations: one micro-batch's sequences at a time)
  const double B = std::max(1, cfg.train().batch() / std::max(1, world) / std::max(1, cfg.train().micro_batches())),
               N = B * T;
  const double E = e.num_experts();
  double He_sum = 0;  // hidden widths of all experts
  if (E > 0)
    for (int64_t h : expert_hidden_sizes(e, m.ffn_hidden())) He_sum += static_cast<double>(h);
  const double He = E > 0 ? He_sum / E : F;  // the mean width
  const double Hs = shared_expert_hidden(e, m.ffn_hidden());
  const double ep = std::max(1, cfg.parallel().expert_parallel());
  const bool learned = m.position() == switchyard::ModelConfig::LEARNED;
  const double mats = m.activation() == switchyard::ModelConfig::SWIGLU ? 3 : 2;  // FFN matrices
  double params = V * C + (learned ? T * C : 0) + (m.tie_embeddings() ? 0 : C * V) + V + 2 * C;  // embeddings, head, final norm
  double expert_params = 0;                           // this rank's experts (in params too)
  double acts = N * (2 * V + 4 * C);                  // logits and probabilities; embeddings
  // Key and value width: C, or grouped-query attention's n_kv_heads heads.
  const double KV = C / H * kv_heads(m);
  // train.recompute: the recomputed blocks [0, n) keep their inputs, the
  // others their activations, to the end of the forward; a recomputed
  // block's own come back in its backward, after every later block has
  // dropped its (Block::backward): the larger of the two peaks.
  const int recomputed = recomputed_blocks(cfg);
  double blocks = 0, largest = 0;
  for (int l = 0; l < L; ++l) {
    params += 4 * C + 2 * C * C + 2 * C * KV + 2 * C + 2 * KV;  // norms, qkv and output projections
    const double before = acts;
    acts += N * (6 * C + H);              // norm outputs, q, k, v, attention output; its LSE rows
    const bool moe = is_moe_layer(e, l);
    if (moe) {
      const double local_experts = E / ep * (mats * C * He + He + C);
      expert_params += local_experts;
      params += C * E + local_experts + (e.shared_expert() ? mats * C * Hs + Hs + C : 0);
      // (expert rows: k N cf, or the experts' floors where those are more)
      const double rows = std::max(e.top_k() * e.capacity_factor() * N, E * e.min_capacity());
      acts += N * (2 * E + (e.shared_expert() ? mats * Hs : 0)) + rows * (2 * C + mats * He);
    } else {
      params += mats * C * F + F + C;
      acts += N * mats * F;
    }
    if (l < recomputed) {
      blocks += acts - before;
      largest = std::max(largest, acts - before);
    }
  }
  if (recomputed > 0) {
    const double kept = acts - blocks;  // (with what no block holds: logits, embeddings)
    const double outside = N * (2 * V + 4 * C);
    acts = std::max(kept, outside + largest) + recomputed * N * C;
  }
  MemoryEstimate est;
  // Values and gradients, 8 bytes a parameter; AdamW's two moments 8 more,
  // split over the ranks holding the same parameters where
  // parallel.shard_optimizer (runtime/optimizer_shard.h).
  double moments = params;
  if (cfg.parallel().shard_optimizer() && world > 1)
    moments = (params - expert_params) / world + expert_params / std::max(1.0, world / ep);
  est.parameters = 8 * params + 8 * moments;
  est.activations = 4 * acts;
  return est;
}

double physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * page : 0;
}

namespace {
std::string bytes_str(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (b >= 1024 && u < 5) b /= 1024, ++u;
  char s[32];
  std::snprintf(s, sizeof s, "%.1f %s", b, unit[u]);
  return s;
}
}  // namespace

int ranks_sharing_gpu(int gpu, int gpus, int node_ranks) {
  return node_ranks / gpus + (gpu < node_ranks % gpus ? 1 : 0);
}

MemoryPool training_memory(const Config& cfg, int node_rank, int node_ranks) {
  MemoryPool p;
  if (cfg.backend() != switchyard::Config::CUDA) {
    p.bytes = physical_memory_bytes();
    p.ranks = std::max(1, node_ranks);
    return p;
  }
  const int gpu = node_rank_gpu(node_rank);
  if (gpu < 0) return p;  // bytes 0: the trainer says no GPU is visible
  p.bytes = cuda_device_memory_bytes(gpu);
  p.ranks = ranks_sharing_gpu(gpu, cuda_device_count(), node_ranks);
  p.holder = "GPU " + std::to_string(gpu);
  p.kind = "memory";
  return p;
}

void check_memory(const Config& cfg, int world, const MemoryPool& pool, const std::string& source) {
  if (pool.bytes <= 0) return;
  const MemoryEstimate est = estimate_memory(cfg, world);
  const int ranks = std::max(1, pool.ranks);
  const double need = est.total() * ranks;
  if (need <= pool.bytes) return;
  const auto& m = cfg.model();
  const auto& par = cfg.parallel();
  // What would lower the parameters' share: a smaller model, or experts and
  // the AdamW state split over ranks (with one rank: more ranks to split them).
  std::string split;
  if (cfg.moe().num_experts() > 0 && par.expert_parallel() <= 1) split = "the experts (parallel.expert_parallel)";
  if (!par.shard_optimizer())
    split += (split.empty() ? "" : " or ") + std::string("the AdamW state (parallel.shard_optimizer)");
  std::string fewer_parameters = "a smaller model (model.d_model, model.n_layers, the FFN and expert widths, moe.num_experts)";
  if (!split.empty())
    fewer_parameters += world > 1 ? ", or " + split + " split over the ranks" : ", or more ranks (mpirun -np N) to split " + split + " over";
  std::ostringstream os;
  os << source << ": ";
  if (est.parameters * ranks >= pool.bytes) {
    // No batch fits: the activations' advice would not help.
    os << "the parameters with gradients and AdamW state alone need about " << bytes_str(est.parameters * ranks);
    if (ranks > 1) os << " (" << ranks << " ranks share " << pool.holder << ", " << bytes_str(est.parameters) << " each)";
    os << " but " << pool.holder << " has " << bytes_str(pool.bytes) << " of " << pool.kind << "; needs "
       << fewer_parameters;
    throw ConfigError(os.str());
  }
  os << "model.seq_len = " << m.seq_len() << " with train.batch = " << cfg.train().batch()
     << ": training needs about " << bytes_str(need);
  if (ranks > 1) os << " (" << ranks << " ranks share " << pool.holder << ", " << bytes_str(est.total()) << " each)";
  os << " (activations " << bytes_str(est.activations) << ", parameters with gradients and AdamW state "
     << bytes_str(est.parameters) << ") but " << pool.holder << " has " << bytes_str(pool.bytes) << " of " << pool.kind
     << "; lower model.seq_len or train.batch, or raise train.micro_batches"
     << (world > 1 && !par.shard_optimizer() ? ", or set parallel.shard_optimizer" : "")
     << (!cfg.train().recompute()              ? " (or set train.recompute)"
         : cfg.train().recompute_blocks() > 0 ? " (or raise train.recompute_blocks)"
                                              : "");
  if (est.parameters > est.activations) os << "; the parameters are most of it: " << fewer_parameters;
  throw ConfigError(os.str());
}

}  // namespace sy
