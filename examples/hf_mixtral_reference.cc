#include "examples/hf_mixtral_reference.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "runtime/checkpoint_store.h"
#include "runtime/safetensors.h"

namespace sy {

HfMixtralReference::HfMixtralReference(const std::string& dir) : dir_(dir) {
  const std::string cpath = join_path(dir, "config.json");
  std::ifstream in(cpath);
  if (!in) throw ConfigError(cpath + ": missing");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(cpath + ": not JSON (" + e.what() + ")");
  }
  auto get = [&](const char* key) {
    if (!j.contains(key) || j[key].is_null()) throw ConfigError(cpath + ": no " + key);
    return j[key];
  };
  if (get("model_type") != "mixtral") throw ConfigError(cpath + ": model_type is not mixtral");
  V_ = get("vocab_size");
  C_ = get("hidden_size");
  H_ = get("intermediate_size");
  L_ = get("num_hidden_layers");
  heads_ = get("num_attention_heads");
  kv_heads_ = get("num_key_value_heads");
  D_ = j.contains("head_dim") && !j["head_dim"].is_null() ? j["head_dim"].get<int64_t>() : C_ / heads_;
  G_ = get("num_local_experts");
  k_ = get("num_experts_per_tok");
  max_pos_ = get("max_position_embeddings");
  eps_ = get("rms_norm_eps");
  theta_ = get("rope_theta");
  tied_ = j.value("tie_word_embeddings", false);
  if (heads_ % kv_heads_ != 0) throw ConfigError(cpath + ": num_attention_heads % num_key_value_heads != 0");
  if (D_ % 2 != 0) throw ConfigError(cpath + ": head_dim is odd");
  SafetensorsReader rd(join_path(dir, "model.safetensors"));
  for (const TensorRecord& r : rd.tensors()) {
    Tensor t = rd.read(r);
    if (t.dtype() == DType::bf16) t = t.to(DType::f32);
    if (t.dtype() != DType::f32) throw ConfigError(rd.path() + ": tensor " + r.name + " is " + r.dtype);
    tensors_.emplace_back(r.name, t.to_vector<float>());
  }
}

const std::vector<float>& HfMixtralReference::w(const std::string& name) const {
  for (const auto& [n, v] : tensors_)
    if (n == name) return v;
  if (name == "lm_head.weight" && tied_) return w("model.embed_tokens.weight");
  throw ConfigError(join_path(dir_, "model.safetensors") + ": tensor " + name + " is missing");
}

namespace {
// y (T, out) = x (T, in) W^T with W (out, in): nn.Linear without bias.
std::vector<float> linear(const std::vector<float>& x, int64_t T, int64_t in, const std::vector<float>& W,
                          int64_t out) {
  SY_CHECK(static_cast<int64_t>(W.size()) == in * out, "linear: weight of " << W.size() << ", want " << out << "x" << in);
  std::vector<float> y(T * out);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in; ++i) s += static_cast<double>(x[t * in + i]) * W[o * in + i];
      y[t * out + o] = static_cast<float>(s);
    }
  return y;
}

// MixtralRMSNorm: x * rsqrt(mean(x^2) + eps) * weight.
std::vector<float> rms_norm(const std::vector<float>& x, int64_t T, int64_t C, const std::vector<float>& wt,
                            double eps) {
  std::vector<float> y(x.size());
  for (int64_t t = 0; t < T; ++t) {
    double ms = 0;
    for (int64_t c = 0; c < C; ++c) ms += static_cast<double>(x[t * C + c]) * x[t * C + c];
    const double r = 1.0 / std::sqrt(ms / C + eps);
    for (int64_t c = 0; c < C; ++c) y[t * C + c] = static_cast<float>(wt[c] * (x[t * C + c] * r));
  }
  return y;
}

// apply_rotary_pos_emb on (T, n_heads * D) in place: x * cos + rotate_half(x) * sin,
// rotate_half(x) = cat(-x[D/2:], x[:D/2]); cos, sin = cat(freqs, freqs).
void rotary(std::vector<float>& x, int64_t T, int64_t n_heads, int64_t D, double theta) {
  const int64_t half = D / 2;
  std::vector<float> rot(D);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x.data() + (t * n_heads + h) * D;
      for (int64_t i = 0; i < D; ++i) rot[i] = i < half ? -v[i + half] : v[i - half];
      for (int64_t i = 0; i < D; ++i) {
        const double inv_freq = std::pow(theta, -static_cast<double>(2 * (i % half)) / D);
        const double a = static_cast<double>(t) * inv_freq;
        v[i] = static_cast<float>(v[i] * std::cos(a) + rot[i] * std::sin(a));
      }
    }
}

double silu(double z) { return z / (1.0 + std::exp(-z)); }
}  // namespace

std::vector<float> HfMixtralReference::logits(const std::vector<int32_t>& tokens) const {
  const int64_t T = static_cast<int64_t>(tokens.size());
  SY_CHECK(T > 0 && T <= max_pos_, "reference: " << T << " tokens, max_position_embeddings " << max_pos_);
  const std::vector<float>& emb = w("model.embed_tokens.weight");
  std::vector<float> h(T * C_);
  for (int64_t t = 0; t < T; ++t) {
    SY_CHECK(tokens[t] >= 0 && tokens[t] < V_, "reference: token " << tokens[t]);
    std::copy_n(emb.begin() + tokens[t] * C_, C_, h.begin() + t * C_);
  }
  const int64_t group = heads_ / kv_heads_;
  for (int64_t l = 0; l < L_; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    // self-attention
    const std::vector<float> x = rms_norm(h, T, C_, w(p + "input_layernorm.weight"), eps_);
    std::vector<float> q = linear(x, T, C_, w(p + "self_attn.q_proj.weight"), heads_ * D_);
    std::vector<float> k = linear(x, T, C_, w(p + "self_attn.k_proj.weight"), kv_heads_ * D_);
    const std::vector<float> v = linear(x, T, C_, w(p + "self_attn.v_proj.weight"), kv_heads_ * D_);
    rotary(q, T, heads_, D_, theta_);
    rotary(k, T, kv_heads_, D_, theta_);
    std::vector<float> ctx(T * heads_ * D_);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D_));
    std::vector<double> s(T);
    for (int64_t hd = 0; hd < heads_; ++hd) {
      const int64_t kv = hd / group;
      for (int64_t t = 0; t < T; ++t) {
        double mx = -INFINITY;
        for (int64_t u = 0; u <= t; ++u) {
          double d = 0;
          for (int64_t i = 0; i < D_; ++i)
            d += static_cast<double>(q[(t * heads_ + hd) * D_ + i]) * k[(u * kv_heads_ + kv) * D_ + i];
          s[u] = d * scale;
          mx = std::max(mx, s[u]);
        }
        double z = 0;
        for (int64_t u = 0; u <= t; ++u) z += (s[u] = std::exp(s[u] - mx));
        for (int64_t i = 0; i < D_; ++i) {
          double o = 0;
          for (int64_t u = 0; u <= t; ++u) o += s[u] / z * v[(u * kv_heads_ + kv) * D_ + i];
          ctx[(t * heads_ + hd) * D_ + i] = static_cast<float>(o);
        }
      }
    }
    const std::vector<float> att = linear(ctx, T, heads_ * D_, w(p + "self_attn.o_proj.weight"), C_);
    for (int64_t i = 0; i < T * C_; ++i) h[i] += att[i];
    // block_sparse_moe
    const std::vector<float> y = rms_norm(h, T, C_, w(p + "post_attention_layernorm.weight"), eps_);
    const std::vector<float> router = linear(y, T, C_, w(p + "block_sparse_moe.gate.weight"), G_);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> pr(G_);
      double mx = -INFINITY, z = 0;
      for (int64_t g = 0; g < G_; ++g) mx = std::max(mx, static_cast<double>(router[t * G_ + g]));
      for (int64_t g = 0; g < G_; ++g) z += (pr[g] = std::exp(router[t * G_ + g] - mx));
      for (auto& v2 : pr) v2 /= z;
      std::vector<int64_t> order(G_);
      for (int64_t g = 0; g < G_; ++g) order[g] = g;
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return pr[a] > pr[b]; });
      double sum = 0;
      for (int64_t i = 0; i < k_; ++i) sum += pr[order[i]];
      std::vector<float> xt(y.begin() + t * C_, y.begin() + (t + 1) * C_);
      for (int64_t i = 0; i < k_; ++i) {
        const int64_t g = order[i];
        const double weight = pr[g] / sum;
        const std::string e = p + "block_sparse_moe.experts." + std::to_string(g) + ".";
        const std::vector<float> a = linear(xt, 1, C_, w(e + "w1.weight"), H_);
        const std::vector<float> b = linear(xt, 1, C_, w(e + "w3.weight"), H_);
        std::vector<float> act(H_);
        for (int64_t j = 0; j < H_; ++j) act[j] = static_cast<float>(silu(a[j]) * b[j]);
        const std::vector<float> o = linear(act, 1, H_, w(e + "w2.weight"), C_);
        for (int64_t c = 0; c < C_; ++c) h[t * C_ + c] += static_cast<float>(weight * o[c]);
      }
    }
  }
  const std::vector<float> f = rms_norm(h, T, C_, w("model.norm.weight"), eps_);
  return linear(f, T, C_, w("lm_head.weight"), V_);
}

}  // namespace sy
