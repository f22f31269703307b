// Peers that misbehave in one specific way, for probe and pruning tests.
#pragma once

#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>

namespace p2prc_test {

// An HTTP server on 127.0.0.1 whose GET /server_info answers `status` with `body`.
class FakePeer {
  public:
    FakePeer(int status, std::string body, std::string content_type) {
        http_.Get("/server_info", [=](const httplib::Request&, httplib::Response& res) {
            res.status = status;
            res.set_content(body, content_type.c_str());
        });
        http_.set_keep_alive_timeout(1);
        port_ = static_cast<std::uint16_t>(http_.bind_to_any_port("127.0.0.1"));
        if (port_ == 0) throw std::runtime_error("FakePeer: bind failed");
        thread_ = std::thread([this] { http_.listen_after_bind(); });
        for (int i = 0; i < 2000 && !http_.is_running(); ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ~FakePeer() {
        http_.stop();
        thread_.join();
    }
    std::uint16_t port() const { return port_; }

  private:
    httplib::Server http_;
    std::uint16_t port_ = 0;
    std::thread thread_;
};

// A socket that listens and never accepts: the kernel completes the handshake, then
// nothing ever answers.
class SilentPeer {
  public:
    SilentPeer() {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 64) != 0)
            throw std::runtime_error("SilentPeer: cannot listen");
        socklen_t len = sizeof a;
        getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
        port_ = ntohs(a.sin_port);
    }
    ~SilentPeer() { ::close(fd_); }
    std::uint16_t port() const { return port_; }

  private:
    int fd_ = -1;
    std::uint16_t port_ = 0;
};

// A loopback port with nothing listening (bound once, then released).
inline std::uint16_t closed_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

}  // namespace p2prc_test
