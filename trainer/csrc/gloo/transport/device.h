#pragma once
// Stand-in for Gloo's header: see ../README.md.

namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport
} // namespace gloo
