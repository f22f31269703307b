// The one exception type of the library, with a stable code.
//
// Misuse, I/O and parse errors throw p2prc::error. Expected network outcomes (a peer is
// down, a probe timed out) are values in results, never exceptions.
#pragma once

#include <stdexcept>
#include <string>

namespace p2prc {

enum class errc {
    invalid_argument = 1,  // a value given by the caller (or a config file) is out of range
    parse_error,           // text that should be JSON, an address, a port... is not
    io_error,              // a file or socket operation failed
    protocol_error,        // a peer broke the protocol
    limit_exceeded,        // a size or count bound was hit
    timeout,               // a bounded wait ran out
    unsupported,           // a feature that is not implemented (says so rather than pretend)
    state_error,           // the object is not in a state that allows the call
};

inline const char* to_string(errc code) noexcept {
    switch (code) {
        case errc::invalid_argument: return "invalid_argument";
        case errc::parse_error: return "parse_error";
        case errc::io_error: return "io_error";
        case errc::protocol_error: return "protocol_error";
        case errc::limit_exceeded: return "limit_exceeded";
        case errc::timeout: return "timeout";
        case errc::unsupported: return "unsupported";
        case errc::state_error: return "state_error";
    }
    return "unknown";
}

class error : public std::runtime_error {
public:
    error(errc code, const std::string& message) : std::runtime_error(message), code_(code) {}
    errc code() const noexcept { return code_; }

private:
    errc code_;
};

}  // namespace p2prc
