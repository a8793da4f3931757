// bench_attention: long-context attention (issue 18, item 6). One sequence of
// n tokens, H heads of D, and for each n: our dense causal kernel
// (ops/attention.h; f32, and bf16 on a GPU) next to the sparse methods, all
// through their entry points, forward and forward + backward, all H heads:
//   routed  ops/routed_attention.h, causal and balanced modes, k = sqrt(n) and
//           k = 256 clusters; all heads stacked in one call each (as
//           runtime/sparse_self_attention.cc runs its routing heads): LN of q
//           and k (no scale or bias), assign_clusters (centroid scores,
//           choose, sort by cluster), then the attention over the clusters. Centroids: k-means (3 rounds, the config's default) on head 0's
//           normalised queries, shared by all heads and both modes. Not timed:
//           the training-only extras (cluster statistics for the EMA, the
//           commitment loss and its backward through the LN).
//   local   causal sliding window w = 256, 512: local_keysets (once, shared by
//           the heads, as the layer does) + sparse_attention_forward/backward.
//   tiled window  the same windows on the dense kernels (AttentionShape::window:
//           key tiles outside a query tile's window are never loaded), f32
//           and bf16; "of dense" is then the FLOP rate on the pairs it
//           computes against the dense causal kernel's (issue 18's bar: 50%).
//   block   block top-k, block 64, top 8: block_topk_keysets per head + sparse
//           attention; on a GPU (f32) the key sets are packed one segment per
//           key block inside the selection, and the attention runs on the
//           tiled varlen kernels (ops/cuda/block_topk_pack.h).
//   floor   "dense B<k> T<n/k>": routed attention's k clusters as one batch of
//           k causal sequences of n / k tokens on the dense kernel (equal
//           clusters' pairs), and PyTorch SDPA at that shape where --sdpa
//           has it; a line under the table sets each routed row's attention
//           part (ms less sel ms) against it. (bench_ops' varlen ladder,
//           examples/bench_varlen.h, steps the varlen kernels alone from the
//           dense kernel to the routed packing; this is the whole op.)
// The recipe is bench_ops's (llm.c's dev/cuda, nccl-tests): warm-up, the
// median of timed runs (CUDA events on a device, the host clock on the CPU;
// --iters runs, fewer but at least 3 where they would pass --budget seconds),
// work by formula, rates as fractions of ceilings measured in the same run, a
// table on stdout (last), JSON to --json.
//
// Work: the pairs (query, key) each method computes, from its key sets (dense:
// H n(n+1)/2). Forward 4 D FLOPs per pair (q.k and a.v, 2 D each); backward
// recomputes s and forms dP, dV, dQ, dK: 10 D per pair, so forward + backward
// counts 14 D per pair (3.5x forward, bench_ops's dense count).
// "sel": the time of cluster assignment / key-set construction inside a row's
// time, both medians of the same runs. "x dense", "of dense": against our
// dense causal kernel at the same n and pass, bf16 on a GPU (the fastest we
// have), f32 on the CPU. Dtypes: every method is tried in bf16 too on a GPU;
// a method without a bf16 kernel (today: local key sets; f32 only) gets one
// "not run" row (on a GPU their f32 rows run at the smallest n only); routed attention (both modes) and block top-k run bf16 on
// the tensor-core varlen kernels, clusters and blocks chosen from f32 values.
// "x SDPA": against PyTorch SDPA (causal, bf16) at the same n and pass, read
// from torch_attention.py's JSON (--sdpa), whose rows are shown too. #wrong: at the smallest n only, output elements (o; and
// dq, dk, dv for forward + backward) off the CPU reference beyond the
// tolerance class (f32 1e-4, bf16 2e-2 / 5e-2 relative, with an rms floor, as
// bench_ops); routed rows run the CPU on the device's clusters, and their
// note counts the cluster decisions that differ from the CPU's own assignment.
//
//   python3 scripts/bench/torch_attention.py --lengths 4096,16384,65536 --head-dims 64 --batch 1 --json sdpa.json
//   build/bin/bench_attention --device cuda --sdpa sdpa.json --json bench_attention.json
//   build/bin/bench_attention --device cuda --tokens 4096,16384
//   build/bin/bench_attention --device cpu --quick       (small shapes: a smoke test)
#include <CLI/CLI.hpp>

#include "examples/cli.h"
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/device_runtime.h"
#include "core/error.h"
#include "core/rng.h"
#include "examples/bench_common.h"
#include "ops/attention.h"
#include "ops/layernorm.h"
#include "ops/matmul.h"
#include "ops/routed_attention.h"
#include "ops/sparse_attention.h"
#include "runtime/output_file.h"
#include "runtime/run_tool.h"

#ifdef SY_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#endif

namespace {

using sy::Ctx;
using sy::DType;
using sy::Tensor;

using sy::bench::count_wrong;
using sy::bench::now_s;

// The timing recipe: `warmup` untimed runs, then up to `iters` timed runs,
// fewer (but at least 3) when they would take more than `budget_s` in all
// (the slow cases at 64k, e.g. dense f32, keep the GPU run short); medians.
// On a device, one part whose call takes under 1 ms alone is timed as calls
// back to back between the two events, as many as fill about 1 ms (at most
// 200; reps()), the time a call their mean: a call timed alone holds the
// host's launch gaps, which at the small batches of the floor rows are most
// of it (torch_attention.py times SDPA the same way).
struct Timing {
  Ctx& ctx;
  sy::DeviceRuntime* rt;  // null: the host clock
  int warmup, iters;
  double budget_s;
  mutable int reps_ = 1;  // the last parts()' calls a timed run
  int reps() const { return reps_; }

  // Runs parts[0], parts[1], ... in order; returns the median of the time to
  // the end of each part (the last: the whole), all from the same runs, and
  // the number of runs. On a device the host waits for the end of each part
  // but the last before it launches the next (a gap of one launch).
  std::pair<std::vector<double>, int> parts(const std::vector<std::function<void()>>& parts) const {
    for (int i = 0; i < warmup; ++i)
      for (const auto& f : parts) f();
    reps_ = 1;
    if (rt && parts.size() == 1) {
      sy::EventTimer alone(ctx.stream);
      alone.start();
      parts[0]();
      const double ms = alone.stop_ms();
      reps_ = ms >= 1.0 ? 1 : std::min(200, std::max(1, static_cast<int>(1.0 / std::max(ms, 1e-3))));
    }
    if (reps_ > 1) return {{sy::bench::time_queued(ctx, parts[0], reps_, iters)}, iters};
    std::vector<std::vector<double>> t(parts.size());
    int runs = iters;
    for (int i = 0; i < runs; ++i) {
      if (rt) {
        std::vector<std::unique_ptr<sy::EventTimer>> timers;
        for (size_t p = 0; p < parts.size(); ++p) timers.push_back(std::make_unique<sy::EventTimer>(ctx.stream));
        for (auto& timer : timers) timer->start();
        for (size_t p = 0; p < parts.size(); ++p) {
          parts[p]();
          t[p].push_back(timers[p]->stop_ms() / 1e3);
        }
      } else {
        const double t0 = now_s();
        for (size_t p = 0; p < parts.size(); ++p) {
          parts[p]();
          t[p].push_back(now_s() - t0);
        }
      }
      if (i == 0 && t.back()[0] * iters > budget_s)
        runs = std::min(iters, std::max(3, static_cast<int>(budget_s / t.back()[0])));
    }
    std::vector<double> median;
    for (auto& v : t) {
      std::sort(v.begin(), v.end());
      median.push_back(v[v.size() / 2]);
    }
    return {median, runs};
  }
  double one(const std::function<void()>& f) const { return parts({f}).first[0]; }
};

// Normal entries rounded to bf16 and kept in f32: the f32 and bf16 runs see
// the same values, so one CPU reference serves both.
Tensor randn(sy::Shape s, sy::Rng& rng) {
  Tensor t = Tensor::empty(std::move(s), DType::f32, sy::host_ctx());
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = static_cast<float>(rng.normal());
  return t.to(DType::bf16).to(DType::f32);
}

Tensor as(const Tensor& host_f32, DType dt, Ctx& ctx) {
  return (dt == DType::f32 ? host_f32 : host_f32.to(dt)).to(ctx);
}

// Head h of an (H, T, D) tensor as a (T, D) view; of an (H, T) one as (T).
Tensor head(const Tensor& t, int64_t h) {
  const int64_t H = t.dim(0), T = t.dim(1);
  if (t.ndim() == 2) return t.reshape({H * T}).rows(h * T, (h + 1) * T);
  return t.reshape({H * T, t.dim(2)}).rows(h * T, (h + 1) * T);
}

// A Route (a cluster list) with its tensors copied to the host.
sy::ops::Route to_host(const sy::ops::Route& r) {
  sy::ops::Route h = r;
  for (Tensor* t : {&h.group, &h.weight, &h.slot, &h.count, &h.offset})
    if (t->defined()) *t = t->to(sy::host_ctx());
  return h;
}

int64_t count_differ(const Tensor& a_any, const Tensor& b_any) {
  const std::vector<int32_t> a = a_any.to_vector<int32_t>(), b = b_any.to_vector<int32_t>();
  int64_t n = std::abs(static_cast<int64_t>(a.size()) - static_cast<int64_t>(b.size()));
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) n += a[i] != b[i];
  return n;
}

struct Row {
  std::string op, pass, dtype;
  int64_t n = 0;
  double seconds = 0, select_seconds = 0, pairs = 0, flops = 0;
  int64_t wrong = -1;  // -1: not compared
  int runs = 0;        // timed runs behind the medians
  int reps = 1;        // calls back to back in a timed run (Timing)
  std::string note;
};

std::string fmt(const char* f, double v) {
  char b[32];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// The cluster counts routed attention runs at n (k = sqrt(n) and 256), where
// n / k is a whole number of at least 16 tokens: the "dense B<k> T<n/k>"
// rows' batches.
std::vector<int64_t> cluster_counts(int64_t n) {
  std::vector<int64_t> ks;
  for (const int64_t K : {std::max<int64_t>(1, std::llround(std::sqrt(double(n)))), int64_t{256}})
    if (n % K == 0 && n / K >= 16 && std::find(ks.begin(), ks.end(), K) == ks.end()) ks.push_back(K);
  return ks;
}

// PyTorch SDPA's seconds by (B, T, pass) from torch_attention.py's JSON:
// its rows "sdpa_fwd_bf16" and "sdpa_fwd_bwd_bf16" of shape "B<B> T<T> H<H>
// D<D>" at this run's heads and head dim (B 1: one sequence of n tokens;
// more: the batches of its --shapes); other rows are ignored.
using SdpaTimes = std::map<std::tuple<int64_t, int64_t, std::string>, double>;
SdpaTimes read_sdpa(const std::string& path, int64_t H, int64_t D) {
  SdpaTimes m;
  if (path.empty()) return m;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw sy::ConfigError("--sdpa " + path + ": is a directory; name torch_attention.py's JSON file");
  std::ifstream f(path);
  if (!f) throw sy::ConfigError("--sdpa " + path + ": cannot be read");
  const nlohmann::json j = nlohmann::json::parse(f, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("ops") || !j["ops"].is_array())
    throw sy::ConfigError("--sdpa " + path + ": not the JSON of scripts/bench/torch_attention.py (an object with \"ops\")");
  for (const auto& r : j["ops"]) {
    if (!r.is_object() || !r.contains("op") || !r.contains("shape") || !r.contains("seconds") || !r["op"].is_string() ||
        !r["shape"].is_string() || !r["seconds"].is_number() || !(r["seconds"].get<double>() > 0))
      throw sy::ConfigError("--sdpa " + path + ": a row without op, shape and seconds > 0: " + sy::printable(r.dump(), 120));
    const std::string op = r["op"].get<std::string>();
    const std::string pass = op == "sdpa_fwd_bf16" ? "fwd" : op == "sdpa_fwd_bwd_bf16" ? "fwd+bwd" : "";
    long long B = 0, T = 0, h = 0, d = 0;
    if (pass.empty() || std::sscanf(r["shape"].get<std::string>().c_str(), "B%lld T%lld H%lld D%lld", &B, &T, &h, &d) != 4 ||
        h != H || d != D)
      continue;
    m[{B, T, pass}] = r["seconds"].get<double>();
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Switchyard long-context attention benchmark (dense, routed, local, block top-k)"};
  app.option_defaults()->always_capture_default();  // --help shows each default
  std::string device = "cuda", json_path, sdpa_path;
  std::vector<int64_t> tokens;
  bool quick = false, overwrite = false;
  int iters = 10, warmup = 2;
  double budget_s = 5;
  int64_t H = 8, D = 64;
  app.add_option("--device", device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--tokens", tokens, "sequence lengths n (default 4096,16384,65536; --quick: 256,512)")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{16}, int64_t{1} << 20));
  app.add_option("--heads", H, "heads")->check(CLI::Range(1, 64));
  app.add_option("--head-dim", D, "head dimension")->check(CLI::Range(1, 256));
  app.add_option("--iters", iters, "timed runs per case (median)")->check(CLI::Range(1, 10000));
  app.add_option("--warmup", warmup, "untimed runs before them")->check(CLI::Range(0, 100));
  app.add_option("--budget", budget_s, "seconds of timed runs per case at most (but 3 runs at least)")
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--json", json_path, "write the results here");
  app.add_option("--sdpa", sdpa_path, "PyTorch SDPA times to compare with: scripts/bench/torch_attention.py's --json");
  app.add_flag("--overwrite", overwrite, "replace an existing --json file");
  app.add_flag("--quick", quick, "small shapes, 2 heads (a smoke test)");
  bool list_floor = false;
  app.add_flag("--list-floor-shapes", list_floor,
               "print the floor rows' batches as BxT,... (torch_attention.py --shapes) for --tokens, and exit");
  sy::tidy_defaults(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::fprintf(stderr, "error: %s (see --help)\n", e.what());
    return 2;
  }

  return sy::run_tool([&] {
    if (tokens.empty()) tokens = quick ? std::vector<int64_t>{256, 512} : std::vector<int64_t>{4096, 16384, 65536};
    if (quick && app.count("--heads") == 0) H = 2;
    std::sort(tokens.begin(), tokens.end());
    tokens.erase(std::unique(tokens.begin(), tokens.end()), tokens.end());
    if (list_floor) {
      std::string list;
      for (const int64_t n : tokens)
        for (const int64_t K : cluster_counts(n)) list += (list.empty() ? "" : ",") + std::to_string(K) + "x" + std::to_string(n / K);
      std::printf("%s\n", list.c_str());
      return 0;
    }
    if (!json_path.empty()) sy::check_output_path("--json", json_path, {{"--sdpa", sdpa_path}}, overwrite);
    const SdpaTimes sdpa = read_sdpa(sdpa_path, H, D);

    std::unique_ptr<sy::DeviceRuntime> rt;
    if (device == "cuda") rt = sy::DeviceRuntime::create(0);
    Ctx& ctx = rt ? rt->ctx() : sy::host_ctx();
    Ctx& cpu = sy::host_ctx();
    std::vector<DType> dtypes = {DType::f32};
    if (rt) dtypes.insert(dtypes.begin(), DType::bf16);  // the CPU reference is f32 only
    const DType base_dt = dtypes.front();                 // the dense baseline: bf16 on a GPU
    std::vector<Row> rows;
    const Timing timing{ctx, rt.get(), warmup, iters, budget_s};
    // Where a selective row's time goes at the largest n, op by op and part
    // by part (core/op_profile.h: CUDA events on a GPU), after its timing:
    // one untimed selection, forward and backward. Printed before the
    // table, and in the JSON's "profiles".
    nlohmann::json profiles = nlohmann::json::object();
    std::string profile_text;

    // Ceiling: a large GEMM, measured in this run (bench_ops's).
    double gemm_rate = 0;
    std::string gemm_what;
#ifdef SY_WITH_CUDA
    if (rt) {
      const int g = quick ? 1024 : 8192;
      // Random operands, drawn on the device on ctx's stream (the GEMMs' stream).
      Tensor ta = sy::bench::random_bf16_matrix(ctx, g, 1), tb = sy::bench::random_bf16_matrix(ctx, g, 2),
             tc = Tensor::empty({g, g}, DType::bf16, ctx);
      void *a = ta.raw(), *b = tb.raw(), *c = tc.raw();
      auto handle = static_cast<cublasHandle_t>(ctx.blas.cublas);
      const float one = 1.f, zero = 0.f;
      const double s = timing.one([&] {
        CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, g, g, g, &one, a, CUDA_R_16BF, g, b, CUDA_R_16BF, g,
                                  &zero, c, CUDA_R_16BF, g, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      });
      gemm_rate = 2.0 * g * g * double(g) / s;
      gemm_what = "cuBLAS bf16 " + std::to_string(g) + "^3";
    }
#endif
    if (!rt) {
      const int64_t g = quick ? 512 : 1024;
      sy::Rng r(1);
      Tensor x = randn({g, g}, r), w = randn({g, g}, r), y = Tensor::empty({g, g}, DType::f32, cpu);
      const double s = timing.one([&] { sy::ops::matmul_forward(cpu, {y, x, w, Tensor()}); });
      gemm_rate = 2.0 * g * g * double(g) / s;
      gemm_what = "OpenBLAS fp32 " + std::to_string(g) + "^3";
    }

    // (method, dtype) pairs that could not run (no kernel): reported once, then skipped.
    std::set<std::string> no_kernel;
    auto unsupported = [&](const std::string& op, DType dt, int64_t n, const std::string& what) {
      Row r;
      r.op = op, r.pass = "-", r.dtype = sy::dtype_name(dt), r.n = n, r.note = "not run: " + what;
      rows.push_back(r);
      no_kernel.insert(op.substr(0, op.find(' ')) + sy::dtype_name(dt));
    };
    auto skipped = [&](const std::string& op, DType dt) {
      return no_kernel.count(op.substr(0, op.find(' ')) + sy::dtype_name(dt)) > 0;
    };

    // The JSON, rewritten after every n (complete: false until the end), so
    // a run stopped at a time limit or by a fault keeps the lengths it
    // finished; a temporary file renamed over it, never half a file.
    const char* dev_name = rt ? rt->name() : "cpu";
    auto write_json = [&](bool complete) {
      if (json_path.empty()) return;
      nlohmann::json out = {{"device", dev_name},
                            {"complete", complete},
                            {"heads", H},
                            {"head_dim", D},
                            {"gemm_ceiling", {{"what", gemm_what}, {"flops_per_s", gemm_rate}}},
                            {"baseline", std::string("dense causal ") + sy::dtype_name(base_dt)},
                            {"flops_per_pair", {{"fwd", 4 * D}, {"fwd+bwd", 14 * D}}},
                            {"checked_n", tokens.front()},
                            {"sdpa", sdpa_path},
                            {"rows", nlohmann::json::array()},
                            {"profiles", profiles}};
      for (const Row& r : rows)
        out["rows"].push_back({{"op", r.op}, {"pass", r.pass}, {"dtype", r.dtype}, {"n", r.n}, {"seconds", r.seconds},
                               {"select_seconds", r.select_seconds}, {"pairs", r.pairs}, {"flops", r.flops},
                               {"wrong", r.wrong}, {"runs", r.runs}, {"reps", r.reps}, {"note", r.note}});
      sy::write_file_replacing(json_path, out.dump(1) + "\n", json_path + ".partial");
    };

    // (A length whose set-up or a method outside the rows' own guards
    // throws - out of memory, a fault - is a row that says so; the later
    // lengths still run.)
    for (const int64_t n : tokens) try {
      const bool check = n == tokens.front();
      const int64_t C = H * D;
      sy::Rng rng(1234 + n);
      const double dense_pairs = H * 0.5 * double(n) * (n + 1);

      // Dense causal, and the same kernels with a sliding window (the local
      // heads' tiled path): packed (1, n, 3C) qkv.
      for (const int64_t w : {int64_t{0}, int64_t{256}, int64_t{512}}) {
        const std::string op = w == 0 ? "dense causal" : "tiled window w=" + std::to_string(w);
        const double ww = w == 0 ? double(n) : double(std::min(w, n));
        const double pairs = H * (n * ww - 0.5 * ww * (ww - 1.0));  // sum_t min(t + 1, w) per head
        sy::ops::AttentionShape s{1, n, C, H};
        s.window = w;
        const Tensor qkv_h = randn({1, n, 3 * C}, rng), dout_h = randn({1, n, C}, rng);
        Tensor out_c, dqkv_c;  // the CPU reference, made once for both dtypes
        if (check) {
          out_c = Tensor::zeros({1, n, C}, DType::f32, cpu);
          Tensor l = Tensor::zeros({1, H, n}, DType::f32, cpu);
          dqkv_c = Tensor::zeros({1, n, 3 * C}, DType::f32, cpu);
          sy::ops::attention_forward(cpu, {out_c, l, qkv_h, s});
          sy::ops::attention_backward(cpu, {dqkv_c, dout_h, qkv_h, out_c, l, s});
        }
        for (const DType dt : dtypes) {
          Tensor qkv = as(qkv_h, dt, ctx), dout = as(dout_h, dt, ctx);
          Tensor o = Tensor::empty({1, n, C}, dt, ctx), lse = Tensor::empty({1, H, n}, DType::f32, ctx);
          Tensor dqkv = Tensor::zeros({1, n, 3 * C}, dt, ctx);
          auto fwd = [&] { sy::ops::attention_forward(ctx, {o, lse, qkv, s}); };
          auto bwd = [&] { sy::ops::attention_backward(ctx, {dqkv, dout, qkv, o, lse, s}); };
          const double tol_f = dt == DType::bf16 ? 2e-2 : 1e-4, tol_b = dt == DType::bf16 ? 5e-2 : 1e-4;
          Row r;
          r.op = op, r.dtype = sy::dtype_name(dt), r.n = n, r.pairs = pairs;
          try {
            r.pass = "fwd", r.flops = 4.0 * D * pairs;
            std::vector<double> t;
            std::tie(t, r.runs) = timing.parts({fwd});
            r.reps = timing.reps();
            r.seconds = t[0];
            if (check) r.wrong = count_wrong(o, out_c, tol_f);
            rows.push_back(r);
            r.pass = "fwd+bwd", r.flops = 14.0 * D * pairs;
            // (dqkv zeroed each time: the backward adds into it, and the layer zeroes it each step)
            std::tie(t, r.runs) = timing.parts({[&] { dqkv.zero(ctx), fwd(), bwd(); }});
            r.reps = timing.reps();
            r.seconds = t[0];
            if (check) {
              dqkv.zero(ctx);
              fwd(), bwd();
              r.wrong = count_wrong(o, out_c, tol_f) + count_wrong(dqkv, dqkv_c, tol_b);
            }
            rows.push_back(r);
          } catch (const std::exception& e) {  // no kernel, out of memory, or a failure: a row that says so
            unsupported(op, dt, n, e.what());
          }
        }
      }

      for (const char* pass : {"fwd", "fwd+bwd"}) {  // PyTorch SDPA from --sdpa, beside ours
        const auto it = sdpa.find({1, n, pass});
        if (it == sdpa.end()) continue;
        Row r;
        r.op = "SDPA (PyTorch)", r.pass = pass, r.dtype = "bf16", r.n = n, r.pairs = dense_pairs;
        r.flops = (r.pass == "fwd" ? 4.0 : 14.0) * D * dense_pairs;
        r.seconds = it->second, r.note = "--sdpa";
        rows.push_back(r);
      }

      // Routed attention's floor: its k clusters of n / k tokens as one batch
      // of k causal sequences on the dense kernel (the pairs of equal
      // clusters, ~H n^2 / 2k), ours and PyTorch's where --sdpa has the shape
      // (torch_attention.py --shapes kx<n/k>). Set against a routed row's
      // attention part (ms less sel ms; the summary under the table), it
      // says how much of that part is the clusters' packing, masks and
      // merge rather than the attention itself. The baseline dtype only.
      for (const int64_t K : cluster_counts(n)) {
        const int64_t T = n / K;
        const std::string op = "dense B" + std::to_string(K) + " T" + std::to_string(T);
        const double pairs = H * double(K) * 0.5 * double(T) * (T + 1);
        sy::ops::AttentionShape s{K, T, C, H};
        const Tensor qkv_h = randn({K, T, 3 * C}, rng), dout_h = randn({K, T, C}, rng);
        Row r;
        r.op = op, r.dtype = sy::dtype_name(base_dt), r.n = n, r.pairs = pairs;
        r.note = "routed k=" + std::to_string(K) + "'s floor";
        try {
          Tensor qkv = as(qkv_h, base_dt, ctx), dout = as(dout_h, base_dt, ctx);
          Tensor o = Tensor::empty({K, T, C}, base_dt, ctx), lse = Tensor::empty({K, H, T}, DType::f32, ctx);
          Tensor dqkv = Tensor::zeros({K, T, 3 * C}, base_dt, ctx);
          auto fwd = [&] { sy::ops::attention_forward(ctx, {o, lse, qkv, s}); };
          auto bwd = [&] { sy::ops::attention_backward(ctx, {dqkv, dout, qkv, o, lse, s}); };
          std::vector<double> t;
          r.pass = "fwd", r.flops = 4.0 * D * pairs;
          std::tie(t, r.runs) = timing.parts({fwd});
          r.reps = timing.reps();
          r.seconds = t[0];
          rows.push_back(r);
          r.pass = "fwd+bwd", r.flops = 14.0 * D * pairs;
          std::tie(t, r.runs) = timing.parts({[&] { dqkv.zero(ctx), fwd(), bwd(); }});
          r.reps = timing.reps();
          r.seconds = t[0];
          rows.push_back(r);
        } catch (const std::exception& e) {  // (as the dense rows: no kernel or out of memory, a row that says so)
          unsupported(op, base_dt, n, e.what());
          continue;
        }
        for (const char* pass : {"fwd", "fwd+bwd"}) {
          const auto it = sdpa.find({K, T, pass});
          if (it == sdpa.end()) continue;
          Row p;
          p.op = "SDPA B" + std::to_string(K) + " T" + std::to_string(T), p.pass = pass, p.dtype = "bf16", p.n = n;
          p.pairs = pairs, p.flops = (p.pass == "fwd" ? 4.0 : 14.0) * D * pairs;
          p.seconds = it->second, p.note = "--sdpa";
          rows.push_back(p);
        }
      }

      // The sparse methods: q, k, v, dout (H, n, D) head-major, one head a (n, D) view.
      const Tensor q_h = randn({H, n, D}, rng), k_h = randn({H, n, D}, rng), v_h = randn({H, n, D}, rng),
                   dout_h = randn({H, n, D}, rng);

      // One method at one dtype: select() builds the key sets / clusters of
      // every head, forward() and backward() run the attention over them.
      struct Method {
        std::string op;
        std::function<void()> select, forward, backward;
        std::function<double()> pairs;  // after forward()
        // The CPU reference (check): o and dq, dk, dv of every head, from the
        // device's selection where it may differ (routed); a note.
        std::function<std::string(Tensor&, Tensor&, Tensor&, Tensor&)> reference;
      };
      auto run = [&](DType dt, Tensor& o, Tensor& dq, Tensor& dk, Tensor& dv, Method& m) {
        if (skipped(m.op, dt)) return;
        Row r;
        r.op = m.op, r.dtype = sy::dtype_name(dt), r.n = n;
        try {
          m.select();
          m.forward();
          r.pairs = m.pairs();
          r.pass = "fwd", r.flops = 4.0 * D * r.pairs;
          std::vector<double> t;
          std::tie(t, r.runs) = timing.parts({m.select, m.forward});
          r.select_seconds = t[0], r.seconds = t[1];
          Row rb = r;
          rb.pass = "fwd+bwd", rb.flops = 14.0 * D * r.pairs;
          std::tie(t, rb.runs) = timing.parts({m.select, [&] { m.forward(), m.backward(); }});
          rb.select_seconds = t[0], rb.seconds = t[1];
          if (n == tokens.back() && dt == dtypes.front() && m.op.rfind("dense", 0) != 0 &&
              m.op.rfind("tiled", 0) != 0) {
            sy::bench::profile_case(ctx, rt != nullptr, m.op + " " + r.dtype + " n=" + std::to_string(n), 1,
                                    [&] { m.select(), m.forward(), m.backward(); }, profiles, profile_text);
          }
          if (check) {
            for (Tensor* g : {&dq, &dk, &dv}) g->zero(ctx);
            m.select(), m.forward(), m.backward();
            Tensor oc = Tensor::zeros({H, n, D}, DType::f32, cpu), dqc = Tensor::zeros({H, n, D}, DType::f32, cpu),
                   dkc = Tensor::zeros({H, n, D}, DType::f32, cpu), dvc = Tensor::zeros({H, n, D}, DType::f32, cpu);
            r.note = rb.note = m.reference(oc, dqc, dkc, dvc);
            const double tol_f = dt == DType::bf16 ? 2e-2 : 1e-4, tol_b = dt == DType::bf16 ? 5e-2 : 1e-4;
            r.wrong = count_wrong(o, oc, tol_f);
            rb.wrong = r.wrong + count_wrong(dq, dqc, tol_b) + count_wrong(dk, dkc, tol_b) + count_wrong(dv, dvc, tol_b);
          }
          rows.push_back(r);
          rows.push_back(rb);
        } catch (const sy::BackendError& e) {  // no kernel for this dtype, or out of memory
          unsupported(m.op, dt, n, e.what());
        } catch (const std::exception& e) {
          // bf16: a bf16 tensor where an op reads f32 (no such path). f32:
          // a failure, reported as its row (the other rows still run).
          unsupported(m.op, dt, n,
                      dt == DType::f32 ? std::string("error: ") + e.what()
                                       : std::string("no ") + sy::dtype_name(dt) + " path (" + e.what() + ")");
        }
      };

      // Routed attention's centroids for k = sqrt(n) and 256 clusters: k-means
      // (the CPU reference, as on the device) on head 0's normalised queries,
      // shared by all heads, both modes and both dtypes.
      std::map<int64_t, sy::ops::Centroids> centroids;
      for (const int64_t K : {std::max<int64_t>(1, std::llround(std::sqrt(double(n)))), int64_t{256}}) {
        if (centroids.count(K)) continue;
        Tensor xn = Tensor::empty({n, D}, DType::f32, cpu), m = Tensor::empty({n}, DType::f32, cpu),
               rs = Tensor::empty({n}, DType::f32, cpu);
        sy::ops::layernorm_forward(cpu, {xn, m, rs, head(q_h, 0), Tensor(), Tensor()});
        sy::ops::Centroids ch(K, D, cpu);
        sy::Rng krng(7);
        sy::ops::kmeans_init(cpu, ch, xn, 3, krng);
        centroids.emplace(K, std::move(ch));
      }

      for (const DType dt : dtypes) {
        const Tensor q = as(q_h, dt, ctx), k = as(k_h, dt, ctx), v = as(v_h, dt, ctx), dout = as(dout_h, dt, ctx);
        Tensor o = Tensor::empty({H, n, D}, dt, ctx), lse = Tensor::empty({H, n}, DType::f32, ctx);
        Tensor dq = Tensor::zeros({H, n, D}, dt, ctx), dk = Tensor::zeros({H, n, D}, dt, ctx),
               dv = Tensor::zeros({H, n, D}, dt, ctx);
        std::vector<sy::ops::KeySets> ks(H);
        auto pairs_of = [&] {
          double p = 0;
          for (const sy::ops::KeySets& s : ks) p += static_cast<double>(s.pairs());
          return p;
        };
        // Attention over ks[h] on every head, forward and backward.
        auto sparse_fwd = [&] {
          for (int64_t h = 0; h < H; ++h) {
            Tensor oh = head(o, h), lh = head(lse, h);
            sy::ops::sparse_attention_forward(ctx, {oh, lh, head(q, h), head(k, h), head(v, h), ks[h]});
          }
        };
        auto sparse_bwd = [&] {
          for (int64_t h = 0; h < H; ++h) {
            Tensor dqh = head(dq, h), dkh = head(dk, h), dvh = head(dv, h);
            sy::ops::sparse_attention_backward(
                ctx, {dqh, dkh, dvh, head(dout, h), head(o, h), head(lse, h), head(q, h), head(k, h), head(v, h), ks[h]});
          }
        };
        // The CPU reference over per-head key sets made by keys_of(h).
        auto sparse_reference = [&](const std::function<sy::ops::KeySets(int64_t)>& keys_of) {
          return [&, keys_of](Tensor& oc, Tensor& dqc, Tensor& dkc, Tensor& dvc) {
            Tensor lc = Tensor::zeros({H, n}, DType::f32, cpu);
            for (int64_t h = 0; h < H; ++h) {
              const sy::ops::KeySets kc = keys_of(h);
              Tensor oh = head(oc, h), lh = head(lc, h), dqh = head(dqc, h), dkh = head(dkc, h), dvh = head(dvc, h);
              sy::ops::sparse_attention_forward(cpu, {oh, lh, head(q_h, h), head(k_h, h), head(v_h, h), kc});
              sy::ops::sparse_attention_backward(
                  cpu, {dqh, dkh, dvh, head(dout_h, h), oh, lh, head(q_h, h), head(k_h, h), head(v_h, h), kc});
            }
            return std::string();
          };
        };

        // Routed attention.
        if (!skipped("routed", dt)) {
          // Clusters from f32 q and k (bf16 rows: the attention reads the bf16
          // tensors; the layer norm and centroid scores stay f32, as in the layer).
          const Tensor q32 = dt == DType::f32 ? q : as(q_h, DType::f32, ctx),
                       k32 = dt == DType::f32 ? k : as(k_h, DType::f32, ctx);
          Tensor qn = Tensor::empty({H, n, D}, DType::f32, ctx), kn = Tensor::empty({H, n, D}, DType::f32, ctx);
          Tensor mean = Tensor::empty({H, n}, DType::f32, ctx), rstd = Tensor::empty({H, n}, DType::f32, ctx);
          for (const auto& kc : centroids) {
            const int64_t K = kc.first;
            sy::ops::Centroids c(K, D, ctx);
            c.mu = kc.second.mu.to(ctx), c.sum = kc.second.sum.to(ctx), c.count = kc.second.count.to(ctx);
            c.initialized = true;
            for (const sy::ops::ClusterMode mode : {sy::ops::ClusterMode::causal, sy::ops::ClusterMode::balanced}) {
              sy::ops::ClusterParams cp;
              cp.mode = mode;
              sy::ops::Clusters cl;
              Method m;
              m.op = std::string("routed ") + (mode == sy::ops::ClusterMode::causal ? "causal" : "balanced") +
                     " k=" + std::to_string(K);
              // All heads in one call each, stacked (ops/routed_attention.h's
              // Clusters), as the layer runs its routing heads.
              auto rows = [&](const Tensor& t) { return t.reshape({H * n, D}); };
              m.select = [&] {
                Tensor qn2 = rows(qn), kn2 = rows(kn), m2 = mean.reshape({H * n}), r2 = rstd.reshape({H * n});
                sy::ops::layernorm_forward(ctx, {qn2, m2, r2, rows(q32), Tensor(), Tensor()});
                sy::ops::layernorm_forward(ctx, {kn2, m2, r2, rows(k32), Tensor(), Tensor()});
                sy::ops::assign_clusters(ctx, cl, qn2, kn2, {&c}, H, cp);
              };
              // The pair count left on the device (as the layer does), read
              // once by pairs() after the timed runs.
              Tensor counts = Tensor::zeros({1}, DType::f64, ctx);
              sy::ops::RoutedSaved saved;  // the forward's packing, reused by the backward (as the layer does)
              m.forward = [&] {
                Tensor o2 = rows(o), l2 = lse.reshape({H * n});
                sy::ops::routed_attention_forward(ctx, {o2, l2, ks[0], rows(q), rows(k), rows(v), cl,
                                                        /*key_sets=*/false, counts.data<double>(), &saved});
              };
              m.backward = [&] {
                Tensor dq2 = rows(dq), dk2 = rows(dk), dv2 = rows(dv);
                sy::ops::routed_attention_backward(ctx, {dq2, dk2, dv2, rows(dout), rows(o), lse.reshape({H * n}),
                                                         rows(q), rows(k), rows(v), ks[0], cl, &saved});
              };
              m.pairs = [&] { return counts.to(cpu).to_vector<double>()[0]; };
              // The CPU on the device's clusters; the note counts the decisions
              // that differ from the CPU's own assignment (near ties round
              // differently in the device's score GEMM).
              m.reference = [&](Tensor& oc, Tensor& dqc, Tensor& dkc, Tensor& dvc) {
                Tensor lc = Tensor::zeros({H * n}, DType::f32, cpu);
                sy::ops::Centroids ch(K, D, cpu);
                ch.mu = c.mu.to(cpu), ch.initialized = true;
                sy::ops::Clusters dev{to_host(cl.queries), to_host(cl.keys), H}, own;
                Tensor qnc = Tensor::empty({H * n, D}, DType::f32, cpu), knc = Tensor::empty({H * n, D}, DType::f32, cpu);
                Tensor mc = Tensor::empty({H * n}, DType::f32, cpu), rc = Tensor::empty({H * n}, DType::f32, cpu);
                sy::ops::layernorm_forward(cpu, {qnc, mc, rc, rows(q_h), Tensor(), Tensor()});
                sy::ops::layernorm_forward(cpu, {knc, mc, rc, rows(k_h), Tensor(), Tensor()});
                sy::ops::assign_clusters(cpu, own, qnc, knc, {&ch}, H, cp);
                const int64_t differ =
                    count_differ(own.queries.group, dev.queries.group) + count_differ(own.keys.group, dev.keys.group);
                sy::ops::KeySets kc;
                Tensor o2 = rows(oc), dq2 = rows(dqc), dk2 = rows(dkc), dv2 = rows(dvc);
                sy::ops::routed_attention_forward(cpu, {o2, lc, kc, rows(q_h), rows(k_h), rows(v_h), dev});
                sy::ops::routed_attention_backward(cpu, {dq2, dk2, dv2, rows(dout_h), o2, lc, rows(q_h), rows(k_h),
                                                         rows(v_h), kc, dev});
                return differ == 0 ? std::string()
                                   : std::to_string(differ) + " cluster decisions differ from the CPU's";
              };
              run(dt, o, dq, dk, dv, m);
            }
          }
        }

        // Local sliding window: one key set, shared by the heads (as the layer does).
        // On a GPU the key-set kernels (f32) run at the checked n only: above
        // it they took 16-21 s a length of the second H200 run's ~150 s stage
        // (one thread a query then; a warp a query since), for pairs the
        // tiled window rows time in a millisecond (and that local heads run
        // on).
        if (rt && dt == DType::f32 && !check && !skipped("local", dt))
          unsupported("local w=256/512", dt, n,
                      "on a GPU at n = " + std::to_string(tokens.front()) +
                          " only (the tiled window rows serve the same pairs)");
        for (const int64_t w : {256, 512}) {
          Method m;
          m.op = "local w=" + std::to_string(w);
          m.select = [&] {
            const sy::ops::KeySets s = sy::ops::local_keysets(ctx, n, w);
            for (sy::ops::KeySets& x : ks) x = s;
          };
          m.forward = sparse_fwd, m.backward = sparse_bwd, m.pairs = pairs_of;
          m.reference = sparse_reference([&, w](int64_t) { return sy::ops::local_keysets(cpu, n, w); });
          run(dt, o, dq, dk, dv, m);
        }

        // Block top-k: each head's own key sets from its q and k.
        {
          constexpr int64_t block = 64, topk = 8;
          Method m;
          m.op = "block64 top8";
          m.select = [&] {
            for (int64_t h = 0; h < H; ++h) ks[h] = sy::ops::block_topk_keysets(ctx, head(q, h), head(k, h), block, topk);
          };
          m.forward = sparse_fwd, m.backward = sparse_bwd, m.pairs = pairs_of;
          m.reference = sparse_reference(
              [&](int64_t h) { return sy::ops::block_topk_keysets(cpu, head(q_h, h), head(k_h, h), block, topk); });
          run(dt, o, dq, dk, dv, m);
        }
      }
      std::cerr << "[bench_attention] n = " << n << " done: " << rows.size() << " rows so far" << std::endl;
      write_json(false);
    } catch (const std::exception& e) {
      Row r;
      r.op = "n=" + std::to_string(n), r.pass = "-", r.dtype = "-", r.n = n;
      r.note = "stopped: " + std::string(e.what()).substr(0, 100);
      std::cerr << "[bench_attention] n = " << n << " " << r.note << std::endl;
      rows.push_back(r);
      write_json(false);
    }

    // The table, last. Baseline: our dense causal kernel at the same n and pass,
    // bf16 on a GPU (the fastest we have), f32 on the CPU.
    std::map<std::pair<int64_t, std::string>, const Row*> base;
    for (const Row& r : rows)
      if (r.op == "dense causal" && r.dtype == sy::dtype_name(base_dt) && r.seconds > 0) base[{r.n, r.pass}] = &r;
    std::printf("%s", profile_text.c_str());  // the profiles, then the table, last
    std::printf("device %s | H %lld, D %lld, one sequence | ceiling: %s %.1f TFLOP/s | baseline: dense causal %s\n",
                dev_name, static_cast<long long>(H), static_cast<long long>(D), gemm_what.c_str(), gemm_rate / 1e12,
                sy::dtype_name(base_dt));
    std::printf("%-22s %-7s %-4s %7s %10s %9s %8s %8s %8s %8s %8s %9s %6s %7s  %s\n", "op", "pass", "dt", "n", "ms",
                "pairs", "TFLOP/s", "x dense", "of dense", "of GEMM", "x SDPA", "sel ms", "sel%", "#wrong", "note");
    for (const Row& r : rows) {
      std::string ms = "-", pairs = "-", rate = "-", speed = "-", of_dense = "-", of_gemm = "-", vs_sdpa = "-", sel = "-",
                  selp = "-", wrong = "-";
      if (r.seconds > 0) {
        ms = fmt("%.3f", r.seconds * 1e3);
        pairs = fmt("%.3g", r.pairs);
        const double tf = r.flops / r.seconds;
        rate = fmt("%.2f", tf / 1e12);
        of_gemm = fmt("%.1f%%", 100 * tf / gemm_rate);
        const auto b = base.find({r.n, r.pass});
        if (b != base.end()) {
          speed = fmt("%.2fx", b->second->seconds / r.seconds);
          of_dense = fmt("%.1f%%", 100 * tf / (b->second->flops / b->second->seconds));
        }
        const auto t = sdpa.find({1, r.n, r.pass});
        if (t != sdpa.end()) vs_sdpa = fmt("%.2fx", t->second / r.seconds);
        if (r.select_seconds > 0) {
          sel = fmt("%.3f", r.select_seconds * 1e3);
          selp = fmt("%.0f%%", 100 * r.select_seconds / r.seconds);
        }
      }
      if (r.wrong >= 0) wrong = std::to_string(r.wrong);
      std::printf("%-22s %-7s %-4s %7lld %10s %9s %8s %8s %8s %8s %8s %9s %6s %7s  %s\n", r.op.c_str(), r.pass.c_str(),
                  r.dtype.c_str(), static_cast<long long>(r.n), ms.c_str(), pairs.c_str(), rate.c_str(), speed.c_str(),
                  of_dense.c_str(), of_gemm.c_str(), vs_sdpa.c_str(), sel.c_str(), selp.c_str(), wrong.c_str(),
                  r.note.c_str());
    }
    // Each routed row's attention part (ms less sel ms) against its floor
    // row at the same n, k and pass (the clusters as one batch).
    for (const Row& r : rows) {
      const auto k_at = r.op.find(" k=");
      if (r.op.rfind("routed ", 0) != 0 || k_at == std::string::npos || !(r.seconds > 0)) continue;
      const std::string K = r.op.substr(k_at + 3);
      for (const Row& f : rows)
        if (f.n == r.n && f.pass == r.pass && f.seconds > 0 && f.dtype == r.dtype &&
            f.op.rfind("dense B" + K + " T", 0) == 0)
          std::printf("%s %s %s n=%lld: attention part %.3f ms, %.2fx its floor (%s: %.3f ms)\n", r.op.c_str(),
                      r.pass.c_str(), r.dtype.c_str(), static_cast<long long>(r.n),
                      (r.seconds - r.select_seconds) * 1e3, (r.seconds - r.select_seconds) / f.seconds, f.op.c_str(),
                      f.seconds * 1e3);
    }
    std::printf(
        "FLOPs per pair: 4 D forward, 14 D forward+backward (backward 10 D: s again, dP, dV, dQ, dK). ms includes\n"
        "sel (LN of q, k + cluster assignment and sort / key-set construction). x dense, of dense: against the\n"
        "baseline at the same n and pass; x SDPA: against PyTorch SDPA causal bf16 (--sdpa). #wrong: n = %lld only,\n"
        "against the CPU reference (larger n: the CPU reference would take too long, ~n^2 for dense).\n",
        static_cast<long long>(tokens.front()));
    write_json(true);
    return 0;
  });
}
