// Data-parallel training's collectives through libtorch's own process group (c10d), which tch
// does not bind: a TCPStore for the rendezvous and ProcessGroupGloo for the exchange, the
// same classes torch.distributed uses with the gloo backend. libtorch_cpu.so has both
// compiled in; gloo/ declares the Gloo types the header names (see gloo/README.md).
//
// Every function returns 0 on success, or 1 with *error set to a message the caller frees
// with nasop_dist_free_error. No C++ exception crosses into Rust.
// The wheel was built with Gloo (USE_C10D_GLOO); the header hides the class without it.
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

struct nasop_dist {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  int world;
};

namespace {

void set_error(char** error, const std::string& message) {
  if (error != nullptr) {
    *error = strdup(message.c_str());
  }
}

template <typename F>
int guarded(char** error, F&& body) {
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    set_error(error, e.what_without_backtrace());
  } catch (const std::exception& e) {
    set_error(error, e.what());
  } catch (...) {
    set_error(error, "unknown C++ exception");
  }
  return 1;
}

std::vector<at::Tensor> collect(at::Tensor** tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*tensors[i]);
  }
  return out;
}

// The tensors as one contiguous float buffer on the CPU (gloo's exchange runs on the host),
// so that one collective moves them all.
at::Tensor flatten(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> flat;
  flat.reserve(tensors.size());
  for (const auto& t : tensors) {
    flat.push_back(t.detach().reshape({-1}).to(at::kCPU, at::kFloat));
  }
  return at::cat(flat);
}

void unflatten(const at::Tensor& flat, const std::vector<at::Tensor>& tensors) {
  int64_t offset = 0;
  for (const auto& t : tensors) {
    auto n = t.numel();
    auto part = flat.narrow(0, offset, n).view(t.sizes());
    t.detach().copy_(part);
    offset += n;
  }
}

// Starting a collective records it in c10d's process-wide flight recorder, whose map is not
// safe to insert into from two threads at once: two ranks in one process (the unit tests)
// crashed there about once in 30 runs. Collectives are started one at a time; they still
// run, and are waited for, concurrently.
std::mutex& start_lock() {
  static std::mutex lock;
  return lock;
}

void wait(const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait()) {
    throw std::runtime_error("the collective did not complete");
  }
}

} // namespace

extern "C" {

// Joins the process group of `world` ranks whose store rank 0 serves at host:port; returns
// when every rank has joined, or fails after timeout_ms.
nasop_dist* nasop_dist_new(
    const char* host,
    uint16_t port,
    int rank,
    int world,
    int64_t timeout_ms,
    char** error) {
  nasop_dist* out = nullptr;
  guarded(error, [&] {
    std::chrono::milliseconds timeout(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = rank == 0;
    opts.numWorkers = static_cast<size_t>(world);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    opts.useLibUV = false;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
    auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(
        store, rank, world, options);
    out = new nasop_dist{store, group, world};
  });
  return out;
}

void nasop_dist_free(nasop_dist* dist) {
  delete dist;
}

void nasop_dist_free_error(char* error) {
  free(error);
}

// Replaces each tensor by its mean over the ranks (gradients, a loss).
int nasop_dist_average(nasop_dist* dist, at::Tensor** tensors, size_t n, char** error) {
  return guarded(error, [&] {
    c10::NoGradGuard no_grad;
    auto ts = collect(tensors, n);
    std::vector<at::Tensor> flat{flatten(ts)};
    c10::intrusive_ptr<c10d::Work> work;
    {
      std::lock_guard<std::mutex> started(start_lock());
      work = dist->group->allreduce(flat);
    }
    wait(work);
    flat[0].div_(dist->world);
    unflatten(flat[0], ts);
  });
}

// Replaces each tensor by rank `root`'s (the initial parameters, a stop decision).
int nasop_dist_broadcast(
    nasop_dist* dist,
    at::Tensor** tensors,
    size_t n,
    int root,
    char** error) {
  return guarded(error, [&] {
    c10::NoGradGuard no_grad;
    auto ts = collect(tensors, n);
    std::vector<at::Tensor> flat{flatten(ts)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    c10::intrusive_ptr<c10d::Work> work;
    {
      std::lock_guard<std::mutex> started(start_lock());
      work = dist->group->broadcast(flat, opts);
    }
    wait(work);
    unflatten(flat[0], ts);
  });
}

} // extern "C"
