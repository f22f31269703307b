// Plumbing shared by the relay roles (frp/server.hpp, frp/client.hpp): owned worker
// threads, a registry of live streams to abort on stop, a stream that replays sniffed
// bytes, a message reader that survives timeouts, and the bidirectional byte pipe.
#pragma once

#include "../error.hpp"
#include "../net.hpp"
#include "wire.hpp"
#include "wire_v2.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace p2prc::frp::detail {

using p2prc::detail::Clock;
using p2prc::detail::Millis;
using p2prc::detail::Stream;
using StreamPtr = std::shared_ptr<Stream>;

// Threads owned by one object: spawn() refuses beyond `limit` live threads (a bound on
// what a peer can make us hold), finished threads are joined on the next spawn, and
// join_all() (called by the owner's destructor, after it closed every socket) joins the
// rest.
class TaskGroup {
  public:
    explicit TaskGroup(std::size_t limit) : limit_(limit) {}
    ~TaskGroup() { join_all(); }
    TaskGroup(const TaskGroup&) = delete;
    TaskGroup& operator=(const TaskGroup&) = delete;

    // Runs f on a new thread; false (f not run) when the group is full or closed.
    bool spawn(std::function<void()> f) {
        std::list<Entry> done;
        std::lock_guard<std::mutex> lk(mu_);
        reap_locked(done);
        if (closed_ || live_.size() >= limit_) return false;
        auto flag = std::make_shared<std::atomic<bool>>(false);
        live_.push_back(Entry{std::thread([f = std::move(f), flag] {
                                  try {
                                      f();
                                  } catch (...) {
                                      // A task reports through its owner; nothing escapes.
                                  }
                                  flag->store(true);
                              }),
                              flag});
        // `done` threads already finished: joining them here is instant.
        for (auto& e : done) e.thread.join();
        return true;
    }

    std::size_t size() {
        std::lock_guard<std::mutex> lk(mu_);
        return live_.size();
    }

    // No more spawns; joins everything. Call only after the tasks were told to stop.
    void join_all() {
        std::list<Entry> all;
        {
            std::lock_guard<std::mutex> lk(mu_);
            closed_ = true;
            all.swap(live_);
        }
        for (auto& e : all)
            if (e.thread.joinable() && e.thread.get_id() != std::this_thread::get_id())
                e.thread.join();
            else if (e.thread.joinable())
                e.thread.detach();  // never: join_all is not called from a task
    }

  private:
    struct Entry {
        std::thread thread;
        std::shared_ptr<std::atomic<bool>> done;
    };
    void reap_locked(std::list<Entry>& out) {
        for (auto it = live_.begin(); it != live_.end();) {
            if (it->done->load()) {
                auto next = std::next(it);
                out.splice(out.end(), live_, it);
                it = next;
            } else {
                ++it;
            }
        }
    }
    std::mutex mu_;
    std::list<Entry> live_;
    std::size_t limit_;
    bool closed_ = false;
};

// Live streams that must be aborted when their owner stops (closing wakes every thread
// blocked on them). Entries are removed by a Registration going out of scope.
class StreamRegistry {
  public:
    class Registration {
      public:
        Registration(StreamRegistry& r, StreamPtr s) : r_(r), id_(r.add(std::move(s))) {}
        ~Registration() { r_.remove(id_); }
        Registration(const Registration&) = delete;
        Registration& operator=(const Registration&) = delete;

      private:
        StreamRegistry& r_;
        std::uint64_t id_;
    };

    std::uint64_t add(StreamPtr s) {
        std::lock_guard<std::mutex> lk(mu_);
        if (closed_) {
            s->close();
            return 0;
        }
        auto id = ++next_;
        live_.emplace(id, std::move(s));
        return id;
    }
    void remove(std::uint64_t id) {
        std::lock_guard<std::mutex> lk(mu_);
        live_.erase(id);
    }
    // Closes every registered stream and every stream added later.
    void close_all() {
        std::unordered_map<std::uint64_t, StreamPtr> all;
        {
            std::lock_guard<std::mutex> lk(mu_);
            closed_ = true;
            all.swap(live_);
        }
        for (auto& [id, s] : all) s->close();
    }
    std::size_t size() {
        std::lock_guard<std::mutex> lk(mu_);
        return live_.size();
    }

  private:
    std::mutex mu_;
    std::unordered_map<std::uint64_t, StreamPtr> live_;
    std::uint64_t next_ = 0;
    bool closed_ = false;
};

// A stream whose first reads return bytes already taken from `inner` (the server sniffs
// the first byte of a connection to tell yamux from frp messages, then puts it back).
class ReplayStream final : public Stream {
  public:
    ReplayStream(StreamPtr inner, std::string head)
        : inner_(std::move(inner)), head_(std::move(head)) {}
    std::size_t read_some(void* buf, std::size_t n, Millis timeout) override {
        if (n == 0) return 0;
        if (pos_ < head_.size()) {
            std::size_t k = std::min(n, head_.size() - pos_);
            std::memcpy(buf, head_.data() + pos_, k);
            pos_ += k;
            return k;
        }
        return inner_->read_some(buf, n, timeout);
    }
    void write_all(const void* buf, std::size_t n, Millis timeout) override {
        inner_->write_all(buf, n, timeout);
    }
    void shutdown_write() override { inner_->shutdown_write(); }
    void close() noexcept override { inner_->close(); }
    std::string describe() const override { return inner_->describe(); }

  private:
    StreamPtr inner_;
    std::string head_;
    std::size_t pos_ = 0;
};

// Reads messages from a stream that carries nothing but frames (the encrypted control),
// through an incremental decoder of the connection's codec, so a read that times out
// mid-frame loses nothing.
class MsgReader {
  public:
    explicit MsgReader(Stream& s, Codec codec = {}) : s_(s), dec_(codec) {}

    // The next message, or nullopt when none completed within `timeout`. Throws
    // errc::io_error at end of stream, and the decoder's errors for bad frames.
    std::optional<Message> next(Millis timeout) {
        if (auto m = dec_.take()) return m;
        auto deadline = p2prc::detail::deadline_after(timeout);
        for (;;) {
            auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
            if (left.count() <= 0) return std::nullopt;
            std::size_t k = 0;
            try {
                k = s_.read_some(buf_, sizeof buf_, left);
            } catch (const error& e) {
                if (e.code() == errc::timeout) return std::nullopt;
                throw;
            }
            if (k == 0)
                throw error(errc::io_error, s_.describe() + ": the peer closed the control");
            dec_.feed(buf_, k);
            if (auto m = dec_.take()) return m;
        }
    }

  private:
    Stream& s_;
    MessageDecoder dec_;
    char buf_[4096];
};

// How long the open direction of a half-closed pipe may stay silent before the pipe
// ends: long enough for a reply after the request side closed, short enough that an
// abandoned half-closed connection does not stay pinned for the whole idle timeout.
inline constexpr Millis kHalfClosedLinger{30000};

// Copies bytes both ways between a and b until both directions ended (a clean end of
// stream in one direction is passed on as a half-close) or either side failed (then
// both are closed at once). One direction runs on a thread owned by this call. A
// direction silent for `idle` (or for kHalfClosedLinger once the other one ended) ends
// the pipe. `on_bytes(a_to_b, n)`, when set, is told of every n bytes written (for counters).
inline void pipe_streams(const StreamPtr& a, const StreamPtr& b, Millis idle,
                         const std::function<void(bool, std::size_t)>& on_bytes = {}) {
    std::atomic<int> ended{0};
    Millis linger = std::min(idle, kHalfClosedLinger);
    auto copy = [&](Stream& from, Stream& to) {
        std::vector<char> buf(32 * 1024);
        auto last = Clock::now();
        try {
            for (;;) {
                std::size_t k = 0;
                try {
                    // Short slices (a timeout loses no data on any of our streams) so the
                    // half-closed deadline applies as soon as the other direction ends.
                    k = from.read_some(buf.data(), buf.size(), Millis(1000));
                } catch (const error& e) {
                    if (e.code() != errc::timeout) throw;
                    auto quiet = Clock::now() - last;
                    if (quiet > idle || (ended.load() > 0 && quiet > linger)) throw;
                    continue;
                }
                if (k == 0) {
                    to.shutdown_write();
                    ++ended;
                    return;
                }
                last = Clock::now();
                to.write_all(buf.data(), k, idle);
                if (on_bytes) on_bytes(&from == a.get(), k);
            }
        } catch (...) {
            ++ended;
            to.close();
            from.close();
        }
    };
    std::thread back([&] { copy(*b, *a); });
    copy(*a, *b);
    back.join();
    a->close();
    b->close();
}

// Version "a.b.c" as a comparable triple; fewer than 3 parts counts as 0.0.0 and a
// non-numeric part as 0 (frps's rule).
inline std::array<long, 3> parse_version(const std::string& v) {
    std::vector<std::string> parts;
    std::string cur;
    for (char c : v) {
        if (c == '.') {
            parts.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    parts.push_back(cur);
    if (parts.size() < 3) return {0, 0, 0};
    std::array<long, 3> out{};
    for (int i = 0; i < 3; ++i) {
        long x = 0;
        bool ok = !parts[i].empty() && parts[i].size() < 10;
        for (char c : parts[i]) {
            if (c < '0' || c > '9') {
                ok = false;
                break;
            }
            x = x * 10 + (c - '0');
        }
        out[i] = ok ? x : 0;
    }
    return out;
}

}  // namespace p2prc::frp::detail
