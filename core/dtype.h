// Element types a Tensor can hold, and bf16 <-> f32 conversion.
//
//   f32   the CPU reference computes in it; GPU master weights, router math, losses
//   bf16  storage for GPU GEMM inputs (1 sign, 8 exponent, 7 mantissa bits)
//   i32   token ids, group/slot indices, counts and offsets of a Route
//   i64   large counts and offsets
//   f64   statistics summed over many items and ranks (routing sums)
#pragma once
#include <cstddef>
#include <cstdint>

namespace sy {

enum class DType { f32, bf16, i32, i64, f64 };

// bf16 as stored: the upper 16 bits of an f32. A distinct type so that
// data<bf16_t>() cannot be confused with an integer buffer.
struct bf16_t {
  uint16_t bits;
};

const char* dtype_name(DType t);
size_t dtype_size(DType t);

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::f32; }
template <>
constexpr DType dtype_of<bf16_t>() { return DType::bf16; }
template <>
constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <>
constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <>
constexpr DType dtype_of<double>() { return DType::f64; }

// Round to nearest even; NaN stays NaN.
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t b);
// IEEE binary16 (a file's F16; no tensor holds it) widened exactly:
// subnormals, infinities and NaN (payload kept) included.
float f16_to_f32(uint16_t h);

}  // namespace sy
