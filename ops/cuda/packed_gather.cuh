// The packed attention paths' gathers (ops/cuda/packed_rows.h) launched in
// 16-byte chunks where the head dim and the tensors' alignment allow
// (chunk_elems), element by element otherwise: routed attention's clusters
// (routed_attention.cu) and block top-k's key blocks (sparse_attention.cu).
#pragma once
#include "ops/cuda/common.cuh"
#include "ops/cuda/packed_rows.h"

namespace sy::ops::cuda {

// qkv (rows, 3D) = [q | k | v] of each row's token.
template <class E>
void gather_qkv_rows(const Launch& run, int64_t rows, const routed::GatherQKV<E>& g) {
  using T = typename E::T;
  constexpr int V = 16 / sizeof(T);
  if (routed::chunk_elems<T>(g.D, {g.q, g.k, g.v, g.qkv}) == V)
    run(rows * 3 * g.D / V, routed::GatherQKV<E, V>{g.q, g.k, g.v, g.row_token, g.D, g.qkv});
  else
    run(rows * 3 * g.D, g);
}

// dout_p, o_p (rows, D) and lse_p (rows) of each row's token.
template <class E>
void gather_grad_rows(const Launch& run, int64_t rows, const routed::GatherGrad<E>& g) {
  using T = typename E::T;
  constexpr int V = 16 / sizeof(T);
  if (routed::chunk_elems<T>(g.D, {g.dout, g.o, g.dout_p, g.o_p}) == V)
    run(rows * g.D / V, routed::GatherGrad<E, V>{g.dout, g.o, g.lse, g.row_token, g.is_query, g.D, g.dout_p, g.o_p,
                                                  g.lse_p});
  else
    run(rows * g.D, g);
}

}  // namespace sy::ops::cuda
