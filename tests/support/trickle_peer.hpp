// A peer that answers "HTTP/1.1 200 OK\r\n" and then one header byte per `interval`, never
// ending the headers: each receive of the client gets a byte, so only a whole-request
// deadline ends the request. Bounded: it stops (and closes everything) after `lifetime`,
// on destruction, or after 32 connections.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <thread>
#include <vector>

namespace p2prc_test {

class TricklePeer {
  public:
    explicit TricklePeer(std::chrono::milliseconds interval = std::chrono::milliseconds(300),
                         std::chrono::milliseconds lifetime = std::chrono::milliseconds(10000))
        : interval_(interval), lifetime_(lifetime) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
            ::listen(fd_, 64) != 0) {
            if (fd_ >= 0) ::close(fd_);
            throw std::runtime_error("TricklePeer: cannot listen");
        }
        socklen_t len = sizeof a;
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
        port_ = ntohs(a.sin_port);
        thread_ = std::thread([this] { run(); });
    }
    ~TricklePeer() {
        stop_ = true;
        thread_.join();
        ::close(fd_);
    }
    TricklePeer(const TricklePeer&) = delete;
    TricklePeer& operator=(const TricklePeer&) = delete;

    std::uint16_t port() const { return port_; }
    int accepted() const { return accepted_.load(); }

  private:
    void run() {
        using clock = std::chrono::steady_clock;
        const auto end = clock::now() + lifetime_;
        auto next_byte = clock::now() + interval_;
        std::vector<int> conns;
        while (!stop_ && clock::now() < end) {
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, 20) > 0 && conns.size() < 32) {
                int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
                if (c >= 0) {
                    ++accepted_;
                    conns.push_back(c);
                    static const char status[] = "HTTP/1.1 200 OK\r\n";
                    ::send(c, status, sizeof status - 1, MSG_NOSIGNAL);
                }
            }
            if (clock::now() >= next_byte) {
                next_byte += interval_;
                for (int c : conns) ::send(c, "X", 1, MSG_NOSIGNAL);
            }
        }
        for (int c : conns) ::close(c);
    }

    std::chrono::milliseconds interval_, lifetime_;
    int fd_ = -1;
    std::uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::atomic<int> accepted_{0};
    std::thread thread_;
};

}  // namespace p2prc_test
