#include "ops/hash_routing.h"

#include <algorithm>

namespace sy::ops {

void hash_route_keys(Ctx& ctx, Tensor& keys, const Tensor& ids, uint64_t seed, const Tensor& table) {
  SY_CHECK(keys.ndim() == 2, "hash_route_keys: keys " << shape_str(keys.shape()) << " are not (N, G)");
  check_dtype(keys, DType::f32, "hash_route_keys keys");
  check_shape(ids, {keys.dim(0)}, "hash_route_keys ids");
  check_dtype(ids, DType::i32, "hash_route_keys ids");
  SY_CHECK(keys.dim(1) >= 1, "hash_route_keys: no expert to route to");
  if (table.defined()) {
    SY_CHECK(table.ndim() == 1 && table.numel() >= 1,
             "hash_route_keys: table " << shape_str(table.shape()) << " is not (V)");
    check_dtype(table, DType::i32, "hash_route_keys table");
    check_device(ctx, "hash_route_keys", {&table});
  }
  check_device(ctx, "hash_route_keys", {&keys, &ids});
  SY_DISPATCH(ctx, hash_route_keys, ctx, keys, ids, seed, table);
}

std::vector<int32_t> balanced_hash_table(const std::vector<int64_t>& counts, int64_t G) {
  SY_CHECK(G >= 1, "balanced_hash_table: " << G << " experts");
  std::vector<int32_t> order(counts.size());
  for (size_t t = 0; t < order.size(); ++t) order[t] = static_cast<int32_t>(t);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return counts[a] > counts[b]; });
  std::vector<int64_t> load(G, 0);
  std::vector<int32_t> table(counts.size(), 0);
  for (const int32_t t : order) {
    SY_CHECK(counts[t] >= 0, "balanced_hash_table: id " << t << " counted " << counts[t] << " times");
    const int64_t g = std::min_element(load.begin(), load.end()) - load.begin();  // (the first of equals)
    table[t] = static_cast<int32_t>(g);
    load[g] += counts[t];
  }
  return table;
}

}  // namespace sy::ops
