#pragma once
// Stand-in for Gloo's header: see README.md.
#include <chrono>

namespace gloo {
class Context {
 public:
  virtual ~Context();
  void setTimeout(std::chrono::milliseconds timeout);
};
} // namespace gloo
