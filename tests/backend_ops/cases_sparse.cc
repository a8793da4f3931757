// Op cases: routed attention's clusters and attention, attention over key
// sets (tests/backend_ops_test.cc).
#include "tests/backend_ops/attention_inputs.h"

namespace sy::op_test {

void add_sparse_cases(std::vector<OpCase>& c) {
  // ---- routed attention's clusters ----
  ops::ClusterParams causal, capped, balanced;
  capped.dropless = false;
  capped.capacity_factor = 1.0f;  // drops
  balanced.mode = ops::ClusterMode::balanced;
  for (const ClusterSpec& spec : {ClusterSpec{"causal", 37, 5, 16, causal, false},
                                  ClusterSpec{"causal_capped", 53, 4, 24, capped, false},
                                  ClusterSpec{"causal_shared_keys_one_cluster", 7, 1, 7, causal, true},
                                  // causal at the fused kernel's head dims (ops/cuda/routed_attention.cu's
                                  // nearest_clusters): several centroid chunks, rows not a multiple of its 64
                                  ClusterSpec{"causal_d64_130_clusters", 300, 130, 64, causal, false},
                                  ClusterSpec{"causal_capped_d128", 97, 70, 128, capped, false},
                                  ClusterSpec{"causal_d32_one_cluster", 50, 1, 32, causal, false},
                                  ClusterSpec{"balanced_wide", 37, 4, 130, balanced, false},
                                  ClusterSpec{"balanced_shared_keys", 30, 3, 20, balanced, true}}) {
    c.push_back(assign_clusters_case(spec));
    c.push_back(centroid_update_case(spec));
  }
  c.push_back(stacked_clusters_case("causal", 30, 5, 16, causal));
  c.push_back(stacked_clusters_case("causal_d64_70_clusters", 90, 70, 64, causal));
  c.push_back(stacked_clusters_case("causal_capped", 41, 4, 24, capped));
  c.push_back(stacked_clusters_case("balanced", 30, 4, 16, balanced));
  // ---- routed attention's attention ----
  ops::ClusterParams drops, bal;
  drops.dropless = false;
  drops.capacity_factor = 0.7f;  // tokens in no cluster: o = 0, lse = -inf
  bal.mode = ops::ClusterMode::balanced;
  for (const RoutedSpec& spec : {RoutedSpec{"causal", 61, 5, 16, causal, false},
                                 RoutedSpec{"causal_drops", 53, 4, 24, drops, false},
                                 RoutedSpec{"causal_300_tokens_d64", 300, 17, 64, causal, false},
                                 RoutedSpec{"one_cluster_shared_keys", 7, 1, 7, causal, true},
                                 RoutedSpec{"balanced_wide", 37, 5, 130, bal, false},
                                 RoutedSpec{"causal_d300", 30, 3, 300, causal, false},  // 16 values a lane
                                 RoutedSpec{"balanced_shared_keys", 30, 3, 20, bal, true},
                                 RoutedSpec{"balanced_70_clusters", 160, 70, 4, bal, false},
                                 RoutedSpec{"causal_70_clusters", 160, 70, 8, causal, false},
                                 // head dims the f32 flash kernels take: CUDA packs each cluster
                                 // as a varlen segment (ops/cuda/routed_union_pack.h)
                                 RoutedSpec{"causal_drops_d32", 53, 4, 32, drops, false},
                                 RoutedSpec{"causal_70_clusters_d16", 160, 70, 16, causal, false},
                                 RoutedSpec{"one_cluster_shared_keys_d16", 7, 1, 16, causal, true},
                                 RoutedSpec{"causal_600_tokens_d128", 600, 9, 128, causal, false},
                                 // clusters of more keys than the f32 kernels' 64-row tiles: tiles
                                 // wholly below the diagonal (no mask read) at D 64
                                 RoutedSpec{"causal_1200_tokens_5_clusters_d64", 1200, 5, 64, causal, false},
                                 // balanced clusters at those head dims: the first-shared rule in the mask
                                 RoutedSpec{"balanced_d16", 61, 5, 16, bal, false},
                                 RoutedSpec{"balanced_70_clusters_d32", 160, 70, 32, bal, false},
                                 RoutedSpec{"balanced_shared_keys_d64", 130, 3, 64, bal, true},
                                 RoutedSpec{"balanced_400_tokens_d128", 400, 20, 128, bal, false},
                                 // stacked heads: the rows kernels (d 24) and the tiled ones, both modes
                                 RoutedSpec{"stacked_causal_d24", 50, 4, 24, causal, false, 3},
                                 RoutedSpec{"stacked_causal_drops_d64", 90, 6, 64, drops, false, 4},
                                 RoutedSpec{"stacked_balanced_d24", 40, 3, 24, bal, false, 3},
                                 RoutedSpec{"stacked_balanced_70_clusters_d64", 150, 70, 64, bal, false, 2}})
    c.push_back(routed_attention_case(spec));
  for (const int64_t D : {5, 16})
    c.push_back(routed_attention_case("lone_query_d" + std::to_string(D), 6, D,
                                      [D](Rng& r) { return lone_query_inputs(D, r); }));
  // ---- attention over key sets ----
  auto local = [](int64_t T, int64_t w) {
    return [T, w](Ctx& x, const Ins&) { return ops::local_keysets(x, T, w); };
  };
  auto block_topk = [](int64_t block, int64_t k) {
    return [block, k](Ctx& x, const Ins& in) { return ops::block_topk_keysets(x, in[0], in[1], block, k); };
  };
  auto given = [](Ctx&, const Ins& in) { return ops::KeySets{in[4], in[5]}; };
  c.push_back(sparse_attention_case("local_w9", 70, 16, local(70, 9)));
  c.push_back(sparse_attention_case("local_300_tokens_w64_d64", 300, 64, local(300, 64)));
  c.push_back(sparse_attention_case("local_window_past_the_sequence", 20, 130, local(20, 50)));
  // A head of 300: the warp kernels' 16 values a lane (ops/cuda/routed_attention_rows.h).
  c.push_back(sparse_attention_case("local_w5_d300", 24, 300, local(24, 5)));
  c.push_back(sparse_attention_case("local_one_token", 1, 8, local(1, 4)));
  c.push_back(sparse_attention_case("block_topk_8_top3", 100, 32, block_topk(8, 3)));
  c.push_back(sparse_attention_case("block_topk_5_top0", 23, 8, block_topk(5, 0)));
  c.push_back(sparse_attention_case("block_topk_64_top2_d64", 300, 64, block_topk(64, 2)));
  // Head dims 16-128 run packed per key block on the tiled varlen kernels
  // (ops/cuda/block_topk_pack.h): many blocks and long segments (early blocks
  // chosen by most later queries), no chosen block at all, and d128.
  c.push_back(sparse_attention_case("block_topk_16_top1_d16_long", 1000, 16, block_topk(16, 1)));
  c.push_back(sparse_attention_case("block_topk_16_top0_d16", 50, 16, block_topk(16, 0)));
  c.push_back(sparse_attention_case("block_topk_32_top8_d128", 257, 128, block_topk(32, 8)));
  // 1050 segments: more than the work list's scan has threads (several segments a thread)
  c.push_back(sparse_attention_case("block_topk_2_top1_d16_1050_blocks", 2100, 16, block_topk(2, 1)));
  // ops/cuda/sparse_attention_rows.h's BlockTopkKeys: 9-16 kept blocks
  // (one_pass<16>) and more than 16 (rounds).
  c.push_back(sparse_attention_case("block_topk_8_top12_d16", 300, 16, block_topk(8, 12)));
  c.push_back(sparse_attention_case("block_topk_4_top20_d16", 200, 16, block_topk(4, 20)));
  // D > 128 (ops/cuda/sparse_attention.cu: no block_scores_kernel tile;
  // BlockTopkKeys computes each score itself).
  c.push_back(sparse_attention_case("block_topk_4_top2_d130", 40, 130, block_topk(4, 2)));
  c.push_back(sparse_attention_case("any_keysets", 40, 12, given, [](Rng& r) { return random_keyset_inputs(40, r); }));
}

}  // namespace sy::op_test
