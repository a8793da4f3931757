// The step-time model behind scaling_sweep's projection: an alpha-beta model
// of the links plus the experts' load imbalance, as pure functions (unit
// tested; examples/scaling_sweep.cc measures what they are fed).
//
// Step time at N ranks, experts sharded over them:
//   t = t_compute + t_imb + t_a2a + t_ar
//   t_a2a = sum over exchanges of [alpha + S (N-1)/N / busbw]      (S = bytes a rank sends)
//   t_ar  = 2 (N-1) alpha + 2 (N-1)/N P / busbw                   (ring all-reduce of P bytes; half of
//                                                                   it, a reduce-scatter, where
//                                                                   parallel.reduce_scatter_grads)
//   t_ag  = (N-1) alpha + (N-1)/N Q / busbw                        (ring all-gather of the values of a
//                                                                   sharded update, Q bytes in all:
//                                                                   parallel.shard_optimizer)
// with busbw the bus bandwidth as nccl-tests defines it (algbw * (n-1)/n);
// beyond per_node ranks the inter-node share of the all-to-all traffic,
// (N - per_node)/N of it, crosses a node's link (node_gbs per node), and the
// all-reduce and the all-gather run at a node's link shared by its ranks.
//   t_imb = e * load_excess(kept, N)
// with e the expert FFNs' time a rank spends in a step when the load is
// even: each MoE layer's exchanges wait for the rank whose experts got the
// most rows, while the rest of the step is the same on every rank.
#pragma once
#include <vector>

namespace sy {

struct Link {
  double alpha_s = 0, busbw_gbs = 0;  // latency; bus bandwidth within a node
  double node_gbs = 0;                // per node, across nodes
  int per_node = 1 << 30;             // ranks per node
};

// What the links carry a step, per rank.
struct StepTraffic {
  double exchanges = 0;           // all-to-alls of rows per step: 4 per MoE layer
  double bytes_per_exchange = 0;  // S: what a rank sends in one
  double dense_bytes = 0;         // P: dense gradients all-reduced
  double gathered_bytes = 0;      // Q: values all-gathered after a sharded update (0: not sharded)
  bool scattered = false;         // the dense gradients reduce-scattered, not all-reduced
};

// t_a2a + t_ar + t_ag at N ranks (0 at one rank).
double link_seconds(const StepTraffic& t, int N, const Link& L);

// Per step, per MoE layer, per expert: the share of the layer's assignments
// that expert kept under its capacity.
using KeptShares = std::vector<std::vector<std::vector<double>>>;

// The mean over steps and layers of ep max_r K_r / sum_r K_r - 1, where K_r
// sums the kept shares of rank r's experts (contiguous blocks of E / ep) and
// ep is the largest divisor of E up to N (the experts cannot be split
// further): how much longer than the mean the most loaded rank's experts
// work. 0 for one rank, an even load or no MoE layer.
double load_excess(const KeptShares& kept, int N);

}  // namespace sy
