#include "ops/group_limit.h"

#include "ops/backend.h"

namespace sy::ops {

void limit_groups(Ctx& ctx, Tensor& out, const Tensor& key, const Tensor* bias, const GroupLimit& g) {
  SY_CHECK(key.ndim() == 2, "limit_groups: keys " << shape_str(key.shape()) << " are not (N, G)");
  const int64_t G = key.dim(1);
  check_dtype(key, DType::f32, "limit_groups keys");
  check_shape(out, key.shape(), "limit_groups output");
  check_dtype(out, DType::f32, "limit_groups output");
  if (bias) {
    check_shape(*bias, {G}, "limit_groups bias");
    check_dtype(*bias, DType::f32, "limit_groups bias");
  }
  SY_CHECK(g.groups >= 1 && G % g.groups == 0,
           "limit_groups: " << g.groups << " routing groups for " << G << " experts (they must divide them)");
  const int64_t M = G / g.groups;
  SY_CHECK(g.kept >= 1 && g.kept <= g.groups,
           "limit_groups: " << g.kept << " groups kept of " << g.groups << " (must be in [1, groups])");
  SY_CHECK(g.top_n >= 1 && g.top_n <= std::min(GroupLimit::kMaxTopN, M),
           "limit_groups: a group's score from its " << g.top_n << " best of " << M << " experts (must be in [1, "
                                                     << std::min(GroupLimit::kMaxTopN, M) << "])");
  check_device(ctx, "limit_groups", {&out, &key, bias});
  SY_DISPATCH(ctx, limit_groups, ctx, out, key, bias, g);
}

}  // namespace sy::ops
