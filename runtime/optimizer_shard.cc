#include "runtime/optimizer_shard.h"

#include <algorithm>

#include "core/error.h"
#include "ops/elementwise.h"

namespace sy {

namespace {
constexpr ParamKind kKinds[] = {ParamKind::dense, ParamKind::expert};

ElementRange intersect(ElementRange a, ElementRange b) {
  const int64_t begin = std::max(a.begin, b.begin), end = std::min(a.end, b.end);
  return end > begin ? ElementRange{begin, end} : ElementRange{begin, begin};
}

}  // namespace

std::vector<int64_t> moment_pieces(const ParamStore& params, ParamKind k, ElementRange r) {
  const int parts = params.moment_parts(k);
  std::vector<int64_t> n(parts);
  for (int i = 0; i < parts; ++i) n[i] = intersect(r, params.moment_part(k, parts, i)).size();
  return n;
}

ElementRange owned_elements(const ParamStore& params, ParamKind k, ElementRange r) {
  return intersect(r, params.moment_range(k));
}

void shard_moments(ParamStore& params, const ParallelContext& par) {
  params.set_moment_shard(ParamKind::dense, par.world->size(), par.world->rank());
  params.set_moment_shard(ParamKind::expert, par.replicas->size(), par.replicas->rank());
}

comm::Communicator& moment_group(ParallelContext& par, ParamKind k) {
  return k == ParamKind::dense ? *par.world : *par.replicas;
}

ElementRange param_elements(const Param& p) { return {p.offset, p.offset + p.value.numel()}; }

ElementRange row_elements(const Param& p, int64_t i) {
  const int64_t g = p.row_begin + i;
  return {p.offset + p.row_offset(g) - p.global_begin(), p.offset + p.row_offset(g + 1) - p.global_begin()};
}

std::vector<ops::AdamWParam> owned_update(ParamStore& params, std::deque<Tensor>& views) {
  std::vector<ops::AdamWParam> out;
  for (Param* p : params.all()) {
    ParamArena& a = params.arena(p->kind);
    const ElementRange own = params.moment_range(p->kind), r = intersect(param_elements(*p), own);
    if (r.size() == 0) continue;
    auto view = [&](const Tensor& t, int64_t shift) {
      views.push_back(t.rows(r.begin - shift, r.end - shift));
      return &views.back();
    };
    out.push_back({view(a.value, 0), view(a.grad, 0), view(a.m, own.begin), view(a.v, own.begin), p->decay,
                   a.value_bf16.defined() ? view(a.value_bf16, 0) : nullptr});
  }
  return out;
}

void share_values(Ctx& ctx, ParamStore& params, ParallelContext& par) {
  for (ParamKind k : kKinds) {
    const int parts = params.moment_parts(k);
    if (parts == 1) continue;
    comm::Communicator& group = moment_group(par, k);
    SY_CHECK(group.size() == parts, "moments sharded in " << parts << " parts over a group of " << group.size());
    ParamArena& a = params.arena(k);
    const ElementRange all{0, a.value.numel()}, own = params.moment_range(k);
    group.all_gather_v(a.value, moment_pieces(params, k, all), ctx.stream, "optimizer shard values");
    if (!a.value_bf16.defined()) continue;
    // The shadows of what arrived: every element but our own part (AdamW wrote its shadows).
    for (const ElementRange r : {ElementRange{0, own.begin}, ElementRange{own.end, all.end}}) {
      if (r.size() == 0) continue;
      Tensor shadow = a.value_bf16.rows(r.begin, r.end);
      ops::to_bf16(ctx, shadow, a.value.rows(r.begin, r.end));
    }
  }
}

Tensor gather_moments(Ctx& ctx, const ParamStore& params, ParallelContext& par, ParamKind k, ElementRange r,
                      bool second) {
  comm::Communicator& group = moment_group(par, k);
  const ParamArena& a = params.arena(k);
  const Tensor& mine = second ? a.v : a.m;
  const ElementRange own = params.moment_range(k), piece = intersect(r, own);
  // (every rank holds the whole range for the all-gather; rank 0 writes it)
  Tensor whole = Tensor::empty({r.size()}, DType::f32, ctx);
  if (piece.size() > 0)
    whole.rows(piece.begin - r.begin, piece.end - r.begin)
        .copy_from(mine.rows(piece.begin - own.begin, piece.end - own.begin), ctx);
  if (params.moment_parts(k) > 1)
    group.all_gather_v(whole, moment_pieces(params, k, r), ctx.stream, "optimizer shard moments (checkpoint)");
  if (group.rank() != 0) return Tensor();
  return whole.device().is_cpu() ? whole : whole.to(host_ctx());
}

MomentPiece moment_piece(const ParamStore& params, ParamKind k, ElementRange r) {
  const ElementRange own = params.moment_range(k), piece = intersect(r, own);
  if (piece.size() == 0) return {};
  return {piece.begin - r.begin, piece.begin - own.begin, piece.size()};
}

}  // namespace sy
