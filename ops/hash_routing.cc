#include "ops/hash_routing.h"

namespace sy::ops {

void hash_route_keys(Ctx& ctx, Tensor& keys, const Tensor& ids, uint64_t seed) {
  SY_CHECK(keys.ndim() == 2, "hash_route_keys: keys " << shape_str(keys.shape()) << " are not (N, G)");
  check_dtype(keys, DType::f32, "hash_route_keys keys");
  check_shape(ids, {keys.dim(0)}, "hash_route_keys ids");
  check_dtype(ids, DType::i32, "hash_route_keys ids");
  SY_CHECK(keys.dim(1) >= 1, "hash_route_keys: no expert to route to");
  check_device(ctx, "hash_route_keys", {&keys, &ids});
  SY_DISPATCH(ctx, hash_route_keys, ctx, keys, ids, seed);
}

}  // namespace sy::ops
