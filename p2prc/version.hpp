// p2prc version macros.
#pragma once

#define P2PRC_VERSION_MAJOR 0
#define P2PRC_VERSION_MINOR 1
#define P2PRC_VERSION_PATCH 0
#define P2PRC_VERSION_STRING "0.1.0"

namespace p2prc {
inline constexpr const char* version = P2PRC_VERSION_STRING;
}  // namespace p2prc
