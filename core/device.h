// Where a tensor's bytes live: the host, or CUDA device `index`.
#pragma once
#include <string>

namespace sy {

enum class DeviceKind { cpu, cuda };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;

  static Device cpu() { return {DeviceKind::cpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceKind::cuda, index}; }
  bool is_cpu() const { return kind == DeviceKind::cpu; }
  bool is_cuda() const { return kind == DeviceKind::cuda; }
  bool operator==(const Device& o) const { return kind == o.kind && (is_cpu() || index == o.index); }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;  // "cpu", "cuda:0"
};

// True where the binary has the CUDA backend and a GPU is visible. Checked
// once: without a driver cudaGetDeviceCount's error is sticky.
bool cuda_available();
// The number of visible CUDA devices (0 without the backend or a driver).
int cuda_device_count();
// The GPU a rank takes: its rank among the ranks on its node modulo the
// visible GPUs (the one rule train_switch, the tools and the memory check
// follow); -1 without a GPU.
int node_rank_gpu(int node_rank);
// Total memory of CUDA device `index` in bytes (0 without the backend or that device).
double cuda_device_memory_bytes(int index);

}  // namespace sy
