// Runs an AOTInductor package (torchqrnn.export.to_aoti) on tensors read from a file, with no Python:
// the program links libtorch alone.
//
//   aoti_runner PACKAGE INPUTS OUTPUTS [REPEATS]
//
// INPUTS and OUTPUTS use one small format (torchqrnn.export.write_tensors / read_tensors), little-endian:
//   "TQRNTENS", uint64 count, then per tensor: uint64 ndim, int64 sizes[ndim], float32 data (row-major).
// With REPEATS > 0 it also runs the model that many more times and prints the median time of a run in
// microseconds on stdout ("median_us <value>").
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr char kMagic[8] = {'T', 'Q', 'R', 'N', 'T', 'E', 'N', 'S'};

template <typename T>
T read_value(std::ifstream& in, const std::string& path) {
  T value;
  if (!in.read(reinterpret_cast<char*>(&value), sizeof(T))) {
    throw std::runtime_error("unexpected end of file in " + path);
  }
  return value;
}

std::vector<at::Tensor> read_tensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw std::runtime_error("cannot open " + path);
  }
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, kMagic, 8) != 0) {
    throw std::runtime_error(path + " is not a tensor file (expected the header TQRNTENS)");
  }
  const auto count = read_value<uint64_t>(in, path);
  std::vector<at::Tensor> tensors;
  for (uint64_t i = 0; i < count; ++i) {
    const auto ndim = read_value<uint64_t>(in, path);
    std::vector<int64_t> sizes(ndim);
    for (auto& size : sizes) {
      size = read_value<int64_t>(in, path);
    }
    auto tensor = at::empty(sizes, at::kFloat);
    const auto bytes = static_cast<std::streamsize>(tensor.numel() * sizeof(float));
    if (!in.read(reinterpret_cast<char*>(tensor.data_ptr<float>()), bytes)) {
      throw std::runtime_error("unexpected end of file in " + path);
    }
    tensors.push_back(tensor);
  }
  return tensors;
}

void write_tensors(const std::string& path, const std::vector<at::Tensor>& tensors) {
  std::ofstream out(path, std::ios::binary);
  out.write(kMagic, 8);
  const uint64_t count = tensors.size();
  out.write(reinterpret_cast<const char*>(&count), sizeof(count));
  for (const auto& tensor : tensors) {
    const auto data = tensor.to(at::kFloat).contiguous();
    const uint64_t ndim = data.dim();
    out.write(reinterpret_cast<const char*>(&ndim), sizeof(ndim));
    for (const int64_t size : data.sizes()) {
      out.write(reinterpret_cast<const char*>(&size), sizeof(size));
    }
    out.write(reinterpret_cast<const char*>(data.data_ptr<float>()),
              static_cast<std::streamsize>(data.numel() * sizeof(float)));
  }
  if (!out) {
    throw std::runtime_error("cannot write " + path);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::cerr << "usage: " << argv[0] << " PACKAGE INPUTS OUTPUTS [REPEATS]\n";
    return 2;
  }
  try {
    c10::NoGradGuard no_grad;
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    const auto inputs = read_tensors(argv[2]);
    const auto outputs = loader.run(inputs);
    write_tensors(argv[3], outputs);
    const int repeats = argc == 5 ? std::stoi(argv[4]) : 0;
    if (repeats > 0) {
      std::vector<double> times;
      for (int i = 0; i < repeats; ++i) {
        const auto start = std::chrono::steady_clock::now();
        loader.run(inputs);
        const auto stop = std::chrono::steady_clock::now();
        times.push_back(std::chrono::duration<double, std::micro>(stop - start).count());
      }
      std::nth_element(times.begin(), times.begin() + repeats / 2, times.end());
      std::cout << "median_us " << times[repeats / 2] << "\n";
    }
  } catch (const std::exception& error) {
    std::cerr << "aoti_runner: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
