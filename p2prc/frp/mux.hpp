// yamux: many byte streams over one connection, as hashicorp/yamux v0.1.1 (frp's tcp_mux)
// speaks it. frpc is the client (opens every stream, odd ids 1, 3, 5, ...), frps the
// server (accepts; would use even ids).
//
// Every frame starts with a 12-byte big-endian header:
//
//     +---------+------+-------+-----------+--------+
//     | version | type | flags | stream id | length |
//     | 1 B = 0 | 1 B  | 2 B   | 4 B       | 4 B    |
//     +---------+------+-------+-----------+--------+
//
//   type 0 Data          `length` payload bytes follow the header
//   type 1 WindowUpdate  length = bytes added to the sender's window for that stream
//   type 2 Ping          stream 0; length = opaque id, echoed back with ACK
//   type 3 GoAway        stream 0; length = 0 normal, 1 protocol error, 2 internal error
//   flags  SYN 1 (open), ACK 2 (accepted / ping reply), FIN 4 (half-close), RST 8 (abort)
//
// A stream is opened by a frame with SYN (Go sends WindowUpdate+SYN, delta 0) and
// accepted by one with ACK; data may follow the SYN at once. Each direction of each stream
// has a 256 KiB window: a sender never has more unacknowledged payload in flight, and a
// Data frame longer than the receiver's remaining window is a protocol error (GoAway 1,
// connection closed). The receiver returns window with WindowUpdate frames as the
// application consumes data (Go: when at least half the window is free again). FIN ends
// one direction (reads see end of stream once drained); RST ends both at once. Frames for
// unknown (closed) streams are ignored. A peer that does not answer a Ping is dead.
//
// Threads: each session has one reader thread (parses frames, fills stream buffers, never
// blocks on a write so two sessions can never deadlock each other) and one writer thread
// (sends window updates, ping replies, FIN/RST queued by the reader or by close()).
// Application threads write their Data frames themselves, taking any queued control
// frames along; one lock serialises frames on the transport. Both threads are joined by
// ~MuxSession; closing the transport makes every blocked stream operation fail promptly.
#pragma once

#include "../error.hpp"
#include "../net.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace p2prc::frp {

namespace yamux {

inline constexpr std::uint8_t kVersion = 0;
inline constexpr std::size_t kHeaderSize = 12;
// The per-stream window both sides assume at open; frp never raises it.
inline constexpr std::uint32_t kInitialWindow = 256 * 1024;

enum class FrameType : std::uint8_t { data = 0, window_update = 1, ping = 2, go_away = 3 };

enum Flag : std::uint16_t { kSyn = 1, kAck = 2, kFin = 4, kRst = 8 };

enum GoAwayCode : std::uint32_t { kGoAwayNormal = 0, kGoAwayProtocol = 1, kGoAwayInternal = 2 };

struct Header {
    FrameType type = FrameType::data;
    std::uint16_t flags = 0;
    std::uint32_t stream_id = 0;
    std::uint32_t length = 0;
    friend bool operator==(const Header& a, const Header& b) {
        return a.type == b.type && a.flags == b.flags && a.stream_id == b.stream_id &&
               a.length == b.length;
    }
};

inline std::array<std::uint8_t, kHeaderSize> encode_header(const Header& h) {
    std::array<std::uint8_t, kHeaderSize> b{};
    b[0] = kVersion;
    b[1] = static_cast<std::uint8_t>(h.type);
    b[2] = std::uint8_t(h.flags >> 8);
    b[3] = std::uint8_t(h.flags);
    for (int i = 0; i < 4; ++i) {
        b[4 + i] = std::uint8_t(h.stream_id >> (24 - 8 * i));
        b[8 + i] = std::uint8_t(h.length >> (24 - 8 * i));
    }
    return b;
}

// Decodes a header. A version other than 0 or a type above 3 is a protocol error (Go
// closes the session).
inline Header parse_header(const std::uint8_t* b) {
    if (b[0] != kVersion)
        throw error(errc::protocol_error,
                    "yamux: unsupported version " + std::to_string(b[0]) + " (expected 0)");
    if (b[1] > 3)
        throw error(errc::protocol_error,
                    "yamux: unknown frame type " + std::to_string(b[1]) + " (expected 0-3)");
    Header h;
    h.type = static_cast<FrameType>(b[1]);
    h.flags = std::uint16_t((b[2] << 8) | b[3]);
    h.stream_id = (std::uint32_t(b[4]) << 24) | (std::uint32_t(b[5]) << 16) |
                  (std::uint32_t(b[6]) << 8) | b[7];
    h.length = (std::uint32_t(b[8]) << 24) | (std::uint32_t(b[9]) << 16) |
               (std::uint32_t(b[10]) << 8) | b[11];
    return h;
}

struct Frame {
    Header header;
    std::string payload;  // Data frames only
};

// Incremental, thread-free frame parser: feed() bytes as they arrive, next() whole
// frames. A Data frame longer than `max_data` is refused as soon as its header is
// complete (no valid peer exceeds our window), so at most one header plus `max_data`
// bytes are ever buffered. Errors are sticky.
class FrameParser {
  public:
    explicit FrameParser(std::uint32_t max_data = kInitialWindow) : max_data_(max_data) {}

    void feed(const void* data, std::size_t n) {
        if (failed_) throw error(errc::state_error, "yamux parser: failed earlier: " + why_);
        const auto* p = static_cast<const std::uint8_t*>(data);
        try {
            while (n > 0) {
                if (!in_payload_) {
                    std::size_t k = std::min(n, kHeaderSize - head_fill_);
                    std::memcpy(head_.data() + head_fill_, p, k);
                    head_fill_ += k, p += k, n -= k;
                    if (head_fill_ < kHeaderSize) continue;
                    head_fill_ = 0;
                    cur_.header = parse_header(head_.data());
                    cur_.payload.clear();
                    if (cur_.header.type != FrameType::data || cur_.header.length == 0) {
                        ready_.push_back(std::move(cur_));
                        cur_ = Frame{};
                        continue;
                    }
                    if (cur_.header.length > max_data_)
                        throw error(errc::protocol_error, "yamux: Data frame of " +
                                                              std::to_string(cur_.header.length) +
                                                              " bytes exceeds the largest window " +
                                                              std::to_string(max_data_));
                    cur_.payload.reserve(cur_.header.length);
                    in_payload_ = true;
                }
                std::size_t k = std::min<std::size_t>(n, cur_.header.length - cur_.payload.size());
                cur_.payload.append(reinterpret_cast<const char*>(p), k);
                p += k, n -= k;
                if (cur_.payload.size() == cur_.header.length) {
                    ready_.push_back(std::move(cur_));
                    cur_ = Frame{};
                    in_payload_ = false;
                }
            }
        } catch (const error& e) {
            failed_ = true;
            why_ = e.what();
            throw;
        }
    }

    std::optional<Frame> next() {
        if (ready_.empty()) return std::nullopt;
        Frame f = std::move(ready_.front());
        ready_.pop_front();
        return f;
    }

  private:
    std::uint32_t max_data_;
    std::array<std::uint8_t, kHeaderSize> head_{};
    std::size_t head_fill_ = 0;
    bool in_payload_ = false;
    Frame cur_;
    std::deque<Frame> ready_;
    bool failed_ = false;
    std::string why_;
};

}  // namespace yamux

enum class MuxRole { client, server };

struct MuxConfig {
    // Streams waiting for accept(); a SYN beyond this is answered with RST.
    std::size_t accept_backlog = 256;
    // Streams we opened that the peer has not ACKed yet; open() waits beyond this.
    std::size_t max_unacked_opens = 256;
    // Send our own Ping this often and close the session when the answer takes longer
    // than ping_timeout. Zero disables our pings (peer pings are always answered).
    p2prc::detail::Millis keepalive_interval{30000};
    p2prc::detail::Millis ping_timeout{10000};
    // Time one frame may take to get onto the transport (Go: ConnectionWriteTimeout).
    p2prc::detail::Millis write_timeout{10000};
    // After close(), how long we wait for the peer's FIN before resetting the stream.
    p2prc::detail::Millis half_closed_timeout{300000};
    // Largest Data frame we send (smaller frames interleave streams more fairly).
    std::uint32_t max_frame = 64 * 1024;
    // Queued control frames (window updates, ping replies...) before the peer counts as
    // not reading and the session is closed.
    std::size_t max_queued_control = 65536;
    // Streams the peer may open per second (a token bucket holding one second's worth);
    // a SYN beyond it is answered with RST, so a flood of opens costs the peer, not us.
    // 0: no bound (the default; the relay sets one for its sessions).
    std::uint32_t max_opens_per_second = 0;
};

namespace detail {

// A mutex whose lock can time out, built on std::mutex + condition_variable (it also keeps
// thread sanitizers exact, which do not all model std::timed_mutex).
class FrameWriteLock {
  public:
    bool try_lock_until(p2prc::detail::Clock::time_point deadline) {
        std::unique_lock<std::mutex> lk(m_);
        if (!cv_.wait_until(lk, deadline, [&] { return !busy_; })) return false;
        busy_ = true;
        return true;
    }
    void unlock() {
        {
            std::lock_guard<std::mutex> lk(m_);
            busy_ = false;
        }
        cv_.notify_one();
    }

    // Holds the lock for a scope once try_lock_until succeeded.
    class Guard {
      public:
        explicit Guard(FrameWriteLock& l) : l_(l) {}
        ~Guard() { l_.unlock(); }
        Guard(const Guard&) = delete;
        Guard& operator=(const Guard&) = delete;

      private:
        FrameWriteLock& l_;
    };

  private:
    std::mutex m_;
    std::condition_variable cv_;
    bool busy_ = false;
};

struct MuxStreamState {
    explicit MuxStreamState(std::uint32_t i) : id(i) {}
    const std::uint32_t id;
    // Separate waits for readers (data, FIN) and writers (window), so that a frame wakes
    // only the thread it concerns.
    std::condition_variable read_cv, write_cv;
    void wake_all() {
        read_cv.notify_all();
        write_cv.notify_all();
    }
    std::deque<std::string> chunks;
    std::size_t front_offset = 0;
    std::size_t buffered = 0;
    std::uint32_t recv_window = yamux::kInitialWindow;
    std::uint64_t send_window = yamux::kInitialWindow;
    bool opened_here = false;
    bool acked = false;         // the peer ACKed a stream we opened
    bool remote_fin = false;    // the peer will send no more
    bool local_fin = false;     // we sent FIN (no more writes)
    bool local_closed = false;  // close() was called: no more reads either
    bool reset = false;         // RST sent or received
};

class MuxCore {
  public:
    using Millis = p2prc::detail::Millis;
    using Clock = p2prc::detail::Clock;
    using StatePtr = std::shared_ptr<MuxStreamState>;

    MuxCore(std::shared_ptr<p2prc::detail::Stream> transport, MuxRole role, MuxConfig cfg)
        : transport_(std::move(transport)), cfg_(cfg), next_id_(role == MuxRole::client ? 1 : 2) {}

    // ---- session --------------------------------------------------------------------

    void kill(const std::string& why) noexcept {
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (dead_) return;
            dead_ = true;
            reason_ = why;
            for (auto& [id, st] : streams_) st->wake_all();
            accept_cv_.notify_all();
            writer_cv_.notify_all();
            open_cv_.notify_all();
            ping_cv_.notify_all();
        }
        transport_->close();
    }

    bool dead() const {
        std::lock_guard<std::mutex> lk(mu_);
        return dead_;
    }
    std::string reason() const {
        std::lock_guard<std::mutex> lk(mu_);
        return reason_;
    }
    std::size_t stream_count() const {
        std::lock_guard<std::mutex> lk(mu_);
        return streams_.size();
    }

    [[noreturn]] void throw_dead() const {
        throw error(errc::io_error, "yamux session closed: " + reason_);
    }

    // The reader thread: parse frames until the transport ends or breaks the protocol.
    void read_loop() noexcept {
        std::vector<std::uint8_t> buf(64 * 1024);
        yamux::FrameParser parser(yamux::kInitialWindow);
        try {
            for (;;) {
                if (dead()) return;
                std::size_t k = 0;
                try {
                    k = transport_->read_some(buf.data(), buf.size(), Millis(1000));
                } catch (const error& e) {
                    if (e.code() == errc::timeout) continue;
                    throw;
                }
                if (k == 0) {
                    kill("the peer closed the connection");
                    return;
                }
                parser.feed(buf.data(), k);
                while (auto f = parser.next()) handle(*f);
            }
        } catch (const error& e) {
            if (e.code() == errc::protocol_error || e.code() == errc::limit_exceeded) {
                // Tell the peer why, briefly and best-effort, then drop the connection.
                try {
                    send_now(yamux::Header{yamux::FrameType::go_away, 0, 0, yamux::kGoAwayProtocol},
                             nullptr, 0, Millis(1000));
                } catch (...) {
                }
            }
            kill(std::string("reader: ") + e.what());
        } catch (const std::exception& e) {
            kill(std::string("reader: ") + e.what());
        }
    }

    // The writer thread: flush queued control frames; run the keepalive.
    void write_loop() noexcept {
        using namespace std::chrono;
        auto next_ping = Clock::now() + cfg_.keepalive_interval;
        bool keepalive = cfg_.keepalive_interval.count() > 0;
        std::optional<std::uint32_t> outstanding;
        Clock::time_point ping_deadline{};
        std::unique_lock<std::mutex> lk(mu_);
        while (!dead_) {
            if (dead_pending_) {
                lk.unlock();
                kill("the peer does not read: " + std::to_string(cfg_.max_queued_control) +
                     " control frames queued");
                lk.lock();
                break;
            }
            if (!control_.empty()) {
                lk.unlock();
                try {
                    flush_control_blocking();
                } catch (...) {
                    lk.lock();
                    break;  // the session is closed
                }
                lk.lock();
                continue;
            }
            auto now = Clock::now();
            // A stream we closed whose peer never sends its FIN is reset after a while,
            // so a silent peer cannot pin entries in the table (Go: 5 minutes).
            if (!lingering_.empty() && lingering_.front().first <= now) {
                auto st = lingering_.front().second.lock();
                lingering_.pop_front();
                if (st && !st->remote_fin && !st->reset) {
                    st->reset = true;
                    st->wake_all();
                    maybe_forget_locked(*st);
                    queue_control_locked(
                        yamux::Header{yamux::FrameType::window_update, yamux::kRst, st->id, 0});
                }
                continue;
            }
            auto wake = Clock::time_point::max();
            if (!lingering_.empty()) wake = lingering_.front().first;
            if (keepalive) {
                if (outstanding) {
                    if (ping_acked_.count(*outstanding)) {
                        ping_acked_.erase(*outstanding);
                        outstanding.reset();
                    } else if (now >= ping_deadline) {
                        lk.unlock();
                        kill("keepalive: no answer to ping within " +
                             std::to_string(cfg_.ping_timeout.count()) + " ms");
                        lk.lock();
                        break;
                    }
                }
                if (!outstanding && now >= next_ping) {
                    std::uint32_t id = next_ping_id_++;
                    outstanding = id;
                    pings_.insert(id);
                    ping_deadline = now + cfg_.ping_timeout;
                    next_ping = now + cfg_.keepalive_interval;
                    control_.push_back(yamux::encode_header(
                        yamux::Header{yamux::FrameType::ping, yamux::kSyn, 0, id}));
                    continue;
                }
                wake = std::min(wake, outstanding ? std::min(ping_deadline, next_ping) : next_ping);
            }
            if (wake == Clock::time_point::max())
                writer_cv_.wait(lk);
            else
                writer_cv_.wait_until(lk, wake);
        }
    }

    // ---- frames from the peer -------------------------------------------------------

    void handle(yamux::Frame& f) {
        const auto& h = f.header;
        switch (h.type) {
            case yamux::FrameType::data:
            case yamux::FrameType::window_update:
                handle_stream_frame(f);
                return;
            case yamux::FrameType::ping:
                if (h.flags & yamux::kSyn) {
                    queue_control(yamux::Header{yamux::FrameType::ping, yamux::kAck, 0, h.length});
                } else if (h.flags & yamux::kAck) {
                    std::lock_guard<std::mutex> lk(mu_);
                    if (pings_.erase(h.length)) {
                        ping_acked_.insert(h.length);
                        ping_cv_.notify_all();
                        writer_cv_.notify_all();
                    }
                }
                return;
            case yamux::FrameType::go_away:
                if (h.length == yamux::kGoAwayNormal) {
                    std::lock_guard<std::mutex> lk(mu_);
                    remote_goaway_ = true;
                    open_cv_.notify_all();
                } else {
                    kill("the peer sent GoAway with code " + std::to_string(h.length) +
                         (h.length == 1 ? " (protocol error)" : " (internal error)"));
                }
                return;
        }
    }

    void handle_stream_frame(yamux::Frame& f) {
        const auto& h = f.header;
        bool queue_rst = false;
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (h.flags & yamux::kSyn) {
                if (h.stream_id == 0)
                    throw error(errc::protocol_error, "yamux: SYN for stream id 0");
                if (streams_.count(h.stream_id))
                    throw error(errc::protocol_error, "yamux: SYN for stream " +
                                                          std::to_string(h.stream_id) +
                                                          " which already exists");
                if (local_goaway_ || accept_q_.size() >= cfg_.accept_backlog ||
                    !take_open_token_locked()) {
                    queue_rst = true;  // refuse it; its payload is dropped below
                } else {
                    auto st = std::make_shared<MuxStreamState>(h.stream_id);
                    streams_.emplace(h.stream_id, st);
                    accept_q_.push_back(st);
                    accept_cv_.notify_one();
                }
            }
            auto it = queue_rst ? streams_.end() : streams_.find(h.stream_id);
            if (it != streams_.end()) {
                auto st = it->second;  // keep alive past a possible erase below
                if ((h.flags & yamux::kAck) && st->opened_here && !st->acked) {
                    st->acked = true;
                    --unacked_;
                    open_cv_.notify_all();
                }
                if (h.type == yamux::FrameType::data && h.length > 0) {
                    if (h.length > st->recv_window)
                        throw error(errc::protocol_error,
                                    "yamux: stream " + std::to_string(h.stream_id) + " sent " +
                                        std::to_string(h.length) + " bytes with only " +
                                        std::to_string(st->recv_window) + " bytes of window left");
                    st->recv_window -= h.length;
                    if (st->local_closed || st->reset) {
                        credit_window_locked(*st);  // nobody will read it: free it now
                    } else {
                        st->buffered += f.payload.size();
                        st->chunks.push_back(std::move(f.payload));
                    }
                } else if (h.type == yamux::FrameType::window_update) {
                    st->send_window += h.length;
                }
                if (h.flags & yamux::kFin) st->remote_fin = true;
                if (h.flags & yamux::kRst) {
                    st->reset = true;
                    if (st->opened_here && !st->acked) {
                        st->acked = true;
                        --unacked_;
                        open_cv_.notify_all();
                    }
                }
                maybe_forget_locked(*st);
                bool data = h.type == yamux::FrameType::data && h.length > 0;
                if (data || (h.flags & (yamux::kFin | yamux::kRst))) st->read_cv.notify_all();
                if ((h.type == yamux::FrameType::window_update && h.length > 0) ||
                    (h.flags & yamux::kRst))
                    st->write_cv.notify_all();
            }
        }
        if (queue_rst)
            queue_control(
                yamux::Header{yamux::FrameType::window_update, yamux::kRst, h.stream_id, 0});
    }

    // ---- stream operations (application threads) ------------------------------------

    StatePtr open(Millis timeout) {
        auto deadline = p2prc::detail::deadline_after(timeout);
        StatePtr st;
        {
            std::unique_lock<std::mutex> lk(mu_);
            for (;;) {
                if (dead_) throw_dead();
                if (remote_goaway_)
                    throw error(errc::state_error,
                                "yamux: the peer sent GoAway and accepts no new streams");
                if (unacked_ < cfg_.max_unacked_opens) break;
                if (open_cv_.wait_until(lk, deadline) == std::cv_status::timeout &&
                    unacked_ >= cfg_.max_unacked_opens)
                    throw error(errc::timeout,
                                "yamux: open timed out: " + std::to_string(unacked_) +
                                    " streams still wait for the peer's ACK");
            }
            if (next_id_ > 0xfffffffdu)
                throw error(errc::limit_exceeded,
                            "yamux: stream ids exhausted; open a new session");
            st = std::make_shared<MuxStreamState>(next_id_);
            next_id_ += 2;
            st->opened_here = true;
            ++unacked_;
            streams_.emplace(st->id, st);
        }
        // SYN goes out before any Data of this stream: sent here, synchronously.
        send_now(yamux::Header{yamux::FrameType::window_update, yamux::kSyn, st->id, 0}, nullptr, 0,
                 cfg_.write_timeout);
        return st;
    }

    // nullptr on timeout; throws once the session is closed.
    StatePtr accept(Millis timeout) {
        StatePtr st;
        {
            std::unique_lock<std::mutex> lk(mu_);
            accept_cv_.wait_until(lk, p2prc::detail::deadline_after(timeout),
                                  [&] { return dead_ || !accept_q_.empty(); });
            if (dead_) throw_dead();
            if (accept_q_.empty()) return nullptr;
            st = accept_q_.front();
            accept_q_.pop_front();
        }
        // ACK before the application can write anything on it.
        send_now(yamux::Header{yamux::FrameType::window_update, yamux::kAck, st->id, 0}, nullptr, 0,
                 cfg_.write_timeout);
        return st;
    }

    std::size_t read(MuxStreamState& st, void* buf, std::size_t n, Millis timeout) {
        if (n == 0) return 0;
        std::unique_lock<std::mutex> lk(mu_);
        auto ready = [&] {
            return st.buffered > 0 || st.remote_fin || st.reset || st.local_closed || dead_;
        };
        if (!st.read_cv.wait_until(lk, p2prc::detail::deadline_after(timeout), ready))
            throw error(errc::timeout,
                        "yamux stream " + std::to_string(st.id) + ": read timed out");
        if (st.local_closed)
            throw error(errc::state_error,
                        "yamux stream " + std::to_string(st.id) + ": read after close");
        if (st.reset)
            throw error(errc::io_error, "yamux stream " + std::to_string(st.id) + " was reset");
        if (st.buffered == 0) {
            if (st.remote_fin) return 0;
            throw_dead();
        }
        auto* out = static_cast<char*>(buf);
        std::size_t got = 0;
        while (got < n && !st.chunks.empty()) {
            auto& front = st.chunks.front();
            std::size_t k = std::min(n - got, front.size() - st.front_offset);
            std::memcpy(out + got, front.data() + st.front_offset, k);
            got += k;
            st.front_offset += k;
            if (st.front_offset == front.size()) {
                st.chunks.pop_front();
                st.front_offset = 0;
            }
        }
        st.buffered -= got;
        bool queued = credit_window_locked(st, /*wake_writer=*/false);
        lk.unlock();
        if (queued) flush_or_wake();
        return got;
    }

    void write(MuxStreamState& st, const void* buf, std::size_t n, Millis timeout) {
        auto deadline = p2prc::detail::deadline_after(timeout);
        const auto* p = static_cast<const std::uint8_t*>(buf);
        while (n > 0) {
            std::uint32_t chunk = 0;
            {
                std::unique_lock<std::mutex> lk(mu_);
                auto ready = [&] {
                    return st.send_window > 0 || st.reset || st.local_fin || dead_;
                };
                if (!st.write_cv.wait_until(lk, deadline, ready))
                    throw error(errc::timeout,
                                "yamux stream " + std::to_string(st.id) +
                                    ": write timed out waiting for the peer's window");
                if (st.local_fin)
                    throw error(errc::state_error,
                                "yamux stream " + std::to_string(st.id) + ": write after close");
                if (st.reset)
                    throw error(errc::io_error,
                                "yamux stream " + std::to_string(st.id) + " was reset");
                if (dead_) throw_dead();
                chunk = std::uint32_t(std::min<std::uint64_t>(
                    {std::uint64_t(n), st.send_window, std::uint64_t(cfg_.max_frame)}));
                st.send_window -= chunk;
            }
            send_now(yamux::Header{yamux::FrameType::data, 0, st.id, chunk}, p, chunk,
                     cfg_.write_timeout);
            p += chunk, n -= chunk;
        }
    }

    void shutdown_write(MuxStreamState& st) {
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (st.local_fin || st.reset || dead_) return;
            st.local_fin = true;
            maybe_forget_locked(st);
            st.wake_all();
        }
        queue_control(yamux::Header{yamux::FrameType::window_update, yamux::kFin, st.id, 0});
    }

    // Full close: FIN if not sent yet; further reads fail; arriving data is discarded.
    void close(MuxStreamState& st) noexcept {
        bool fin = false;
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (st.local_closed) return;
            st.local_closed = true;
            st.chunks.clear();
            st.front_offset = 0;
            st.buffered = 0;
            if (!dead_ && !st.reset) credit_window_locked(st);
            fin = !st.local_fin && !st.reset && !dead_;
            st.local_fin = true;
            maybe_forget_locked(st);
            auto it = streams_.find(st.id);
            if (!dead_ && it != streams_.end() && it->second.get() == &st) {
                lingering_.emplace_back(p2prc::detail::deadline_after(cfg_.half_closed_timeout),
                                        it->second);
                writer_cv_.notify_one();
            }
            st.wake_all();
        }
        if (fin) {
            try {
                queue_control(
                    yamux::Header{yamux::FrameType::window_update, yamux::kFin, st.id, 0});
            } catch (...) {
            }
        }
    }

    void reset(MuxStreamState& st) noexcept {
        bool send = false;
        {
            std::lock_guard<std::mutex> lk(mu_);
            send = !st.reset && !dead_;
            st.reset = true;
            st.local_closed = true;
            st.local_fin = true;
            st.chunks.clear();
            st.buffered = 0;
            maybe_forget_locked(st);
            st.wake_all();
        }
        if (send) {
            try {
                queue_control(
                    yamux::Header{yamux::FrameType::window_update, yamux::kRst, st.id, 0});
            } catch (...) {
            }
        }
    }

    // ---- session operations ---------------------------------------------------------

    std::optional<Millis> ping(Millis timeout) {
        auto start = Clock::now();
        std::uint32_t id;
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (dead_) throw_dead();
            id = next_ping_id_++;
            pings_.insert(id);
        }
        queue_control(yamux::Header{yamux::FrameType::ping, yamux::kSyn, 0, id});
        std::unique_lock<std::mutex> lk(mu_);
        bool ok = ping_cv_.wait_until(lk, p2prc::detail::deadline_after(timeout),
                                      [&] { return dead_ || ping_acked_.count(id); });
        pings_.erase(id);
        if (ok && ping_acked_.erase(id))
            return std::chrono::duration_cast<Millis>(Clock::now() - start);
        if (dead_) throw_dead();
        return std::nullopt;
    }

    void go_away() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (local_goaway_ || dead_) return;
            local_goaway_ = true;
        }
        queue_control(yamux::Header{yamux::FrameType::go_away, 0, 0, yamux::kGoAwayNormal});
    }

    const MuxConfig& config() const noexcept { return cfg_; }

  private:
    // Returns window to the peer once at least half of it is free again (Go's rule), so a
    // Go sender never stalls. Caller holds mu_.
    // Returns whether a WindowUpdate was queued.
    bool credit_window_locked(MuxStreamState& st, bool wake_writer = true) {
        std::uint64_t free_space =
            yamux::kInitialWindow - std::min<std::uint64_t>(st.buffered, yamux::kInitialWindow);
        if (free_space <= st.recv_window) return false;
        auto delta = std::uint32_t(free_space - st.recv_window);
        if (delta < yamux::kInitialWindow / 2) return false;
        st.recv_window += delta;
        queue_control_locked(yamux::Header{yamux::FrameType::window_update, 0, st.id, delta},
                             wake_writer);
        return true;
    }

    // A stream both sides finished (or reset) leaves the table; later frames for its id
    // are ignored. Caller holds mu_.
    void maybe_forget_locked(MuxStreamState& st) {
        if (st.reset || (st.local_fin && st.remote_fin)) {
            if (st.opened_here && !st.acked) {  // no ACK will come for a forgotten id
                st.acked = true;
                --unacked_;
                open_cv_.notify_all();
            }
            auto it = streams_.find(st.id);
            if (it != streams_.end() && it->second.get() == &st) streams_.erase(it);
        }
    }

    void queue_control(const yamux::Header& h) {
        std::lock_guard<std::mutex> lk(mu_);
        queue_control_locked(h);
    }
    void queue_control_locked(const yamux::Header& h, bool wake_writer = true) {
        if (dead_) return;
        if (control_.size() >= cfg_.max_queued_control) {
            // The peer sends faster than it reads our answers: treat it as dead.
            dead_pending_ = true;
            writer_cv_.notify_all();
            return;
        }
        control_.push_back(yamux::encode_header(h));
        if (wake_writer) writer_cv_.notify_one();
    }

    // From an application thread: send the queued control frames now if nobody is
    // writing (saves a hop through the writer thread), else leave them to the writer
    // thread. Never waits for the write lock.
    void flush_or_wake() {
        if (write_mu_.try_lock_until(Clock::now())) {
            FrameWriteLock::Guard wl(write_mu_);
            scratch_.clear();
            take_control(scratch_);
            if (!scratch_.empty()) {
                try {
                    write_locked(scratch_.data(), scratch_.size(), cfg_.write_timeout);
                } catch (const error&) {
                    // The session is closed; the caller's read already succeeded.
                }
            }
            return;
        }
        std::lock_guard<std::mutex> lk(mu_);
        writer_cv_.notify_one();
    }

    // Moves the queued control frames into `out` (the write lock is held).
    void take_control(std::vector<std::uint8_t>& out) {
        std::lock_guard<std::mutex> lk(mu_);
        for (const auto& h : control_) out.insert(out.end(), h.begin(), h.end());
        control_.clear();
    }

    // Writes one frame now (serialised with every other writer). A failure leaves the
    // transport mid-frame, so it ends the session.
    void send_now(const yamux::Header& h, const std::uint8_t* payload, std::size_t n,
                  Millis timeout) {
        if (!write_mu_.try_lock_until(p2prc::detail::deadline_after(timeout)))
            throw error(errc::timeout, "yamux: could not write a frame within " +
                                           std::to_string(timeout.count()) + " ms");
        FrameWriteLock::Guard wl(write_mu_);
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (dead_) throw_dead();
        }
        auto head = yamux::encode_header(h);
        // Queued control frames (window updates...) ride along, ahead of this frame.
        scratch_.clear();
        take_control(scratch_);
        scratch_.insert(scratch_.end(), head.begin(), head.end());
        if (n) scratch_.insert(scratch_.end(), payload, payload + n);
        write_locked(scratch_.data(), scratch_.size(), timeout);
    }

    // The writer thread's flush: waits for the write lock, then takes the queue (taking it
    // only under the lock keeps control frames in the order they were queued).
    void flush_control_blocking() {
        if (!write_mu_.try_lock_until(p2prc::detail::deadline_after(cfg_.write_timeout))) {
            kill("writer: transport blocked for " + std::to_string(cfg_.write_timeout.count()) +
                 " ms");
            throw error(errc::timeout, "yamux: transport blocked");
        }
        FrameWriteLock::Guard wl(write_mu_);
        scratch_.clear();
        take_control(scratch_);
        if (!scratch_.empty()) write_locked(scratch_.data(), scratch_.size(), cfg_.write_timeout);
    }

    void write_locked(const void* data, std::size_t n, Millis timeout) {
        try {
            transport_->write_all(data, n, timeout);
        } catch (const error& e) {
            kill(std::string("write failed: ") + e.what());
            throw error(errc::io_error,
                        std::string("yamux session closed: write failed: ") + e.what());
        }
    }

    // One token of the peer's stream-open budget (see MuxConfig::max_opens_per_second).
    bool take_open_token_locked() {
        if (cfg_.max_opens_per_second == 0) return true;
        const double rate = cfg_.max_opens_per_second;
        const auto now = Clock::now();
        if (!bucket_started_) {
            bucket_started_ = true;
            open_tokens_ = rate;
        } else {
            open_tokens_ = std::min(
                rate,
                open_tokens_ + rate * std::chrono::duration<double>(now - bucket_time_).count());
        }
        bucket_time_ = now;
        if (open_tokens_ < 1.0) {
            ++refused_opens_;
            return false;
        }
        open_tokens_ -= 1.0;
        return true;
    }

  public:
    // SYNs refused because the peer opened streams faster than max_opens_per_second.
    std::uint64_t refused_opens() const {
        std::lock_guard<std::mutex> lk(mu_);
        return refused_opens_;
    }

  private:
    std::shared_ptr<p2prc::detail::Stream> transport_;
    MuxConfig cfg_;
    double open_tokens_ = 0;
    Clock::time_point bucket_time_{};
    bool bucket_started_ = false;
    std::uint64_t refused_opens_ = 0;

    mutable std::mutex mu_;  // everything below except write_mu_/scratch_
    std::unordered_map<std::uint32_t, StatePtr> streams_;
    std::deque<StatePtr> accept_q_;
    std::condition_variable accept_cv_, writer_cv_, open_cv_, ping_cv_;
    std::deque<std::array<std::uint8_t, yamux::kHeaderSize>> control_;
    std::deque<std::pair<Clock::time_point, std::weak_ptr<MuxStreamState>>> lingering_;
    std::uint32_t next_id_;
    std::size_t unacked_ = 0;
    std::uint32_t next_ping_id_ = 0;
    std::set<std::uint32_t> pings_, ping_acked_;
    bool dead_ = false, dead_pending_ = false;
    std::string reason_;
    bool local_goaway_ = false, remote_goaway_ = false;

    FrameWriteLock write_mu_;
    std::vector<std::uint8_t> scratch_;
};

}  // namespace detail

// One multiplexed stream: a detail::Stream like a TCP connection. Destroying it closes it
// (FIN to the peer).
class MuxStream final : public p2prc::detail::Stream {
  public:
    MuxStream(std::shared_ptr<detail::MuxCore> core, std::shared_ptr<detail::MuxStreamState> st)
        : core_(std::move(core)), st_(std::move(st)) {}
    ~MuxStream() override { close(); }
    MuxStream(const MuxStream&) = delete;
    MuxStream& operator=(const MuxStream&) = delete;

    std::uint32_t id() const noexcept { return st_->id; }

    std::size_t read_some(void* buf, std::size_t n, p2prc::detail::Millis timeout) override {
        return core_->read(*st_, buf, n, timeout);
    }
    void write_all(const void* buf, std::size_t n, p2prc::detail::Millis timeout) override {
        core_->write(*st_, buf, n, timeout);
    }
    // Sends FIN: the peer reads end of stream; we can still read.
    void shutdown_write() override { core_->shutdown_write(*st_); }
    // FIN (if not sent) and stop reading. Wakes blocked reads and writes on other threads.
    void close() noexcept override { core_->close(*st_); }
    // RST: abort both directions at once; the peer's reads and writes fail.
    void reset() noexcept { core_->reset(*st_); }
    std::string describe() const override { return "yamux stream " + std::to_string(st_->id); }

  private:
    std::shared_ptr<detail::MuxCore> core_;
    std::shared_ptr<detail::MuxStreamState> st_;
};

// A yamux session over a transport (a TCP connection, usually). Owns its two threads.
class MuxSession {
  public:
    MuxSession(std::shared_ptr<p2prc::detail::Stream> transport, MuxRole role, MuxConfig cfg = {})
        : core_(std::make_shared<detail::MuxCore>(std::move(transport), role, cfg)) {
        if (cfg.accept_backlog == 0 || cfg.max_frame == 0 || cfg.max_unacked_opens == 0)
            throw error(errc::invalid_argument,
                        "MuxConfig: accept_backlog, max_frame and max_unacked_opens must be > 0");
        reader_ = std::thread([c = core_] { c->read_loop(); });
        writer_ = std::thread([c = core_] { c->write_loop(); });
    }
    ~MuxSession() {
        close();
        if (reader_.joinable()) reader_.join();
        if (writer_.joinable()) writer_.join();
    }
    MuxSession(const MuxSession&) = delete;
    MuxSession& operator=(const MuxSession&) = delete;

    // Opens a stream (SYN). Throws when the session is closed or the peer sent GoAway.
    std::unique_ptr<MuxStream> open(p2prc::detail::Millis timeout) {
        return std::make_unique<MuxStream>(core_, core_->open(timeout));
    }
    // The next stream the peer opened (ACKs it), or nullptr after `timeout`. Throws once
    // the session is closed.
    std::unique_ptr<MuxStream> accept(p2prc::detail::Millis timeout) {
        auto st = core_->accept(timeout);
        if (!st) return nullptr;
        return std::make_unique<MuxStream>(core_, std::move(st));
    }
    // Streams of the peer refused for opening faster than MuxConfig::max_opens_per_second.
    std::uint64_t refused_opens() const { return core_->refused_opens(); }
    // Round-trip time of one Ping, or nullopt if no answer within `timeout`.
    std::optional<p2prc::detail::Millis> ping(p2prc::detail::Millis timeout) {
        return core_->ping(timeout);
    }
    // GoAway(0): the peer may open no more streams; existing ones continue.
    void go_away() { core_->go_away(); }
    // Closes the transport: every stream's pending and future operations fail.
    void close() noexcept { core_->kill("closed locally"); }
    bool closed() const { return core_->dead(); }
    // Why the session ended ("the peer closed the connection", a protocol error...).
    std::string close_reason() const { return core_->reason(); }
    // Streams in the table (open, or half-closed and waiting for the other FIN).
    std::size_t stream_count() const { return core_->stream_count(); }

  private:
    std::shared_ptr<detail::MuxCore> core_;
    std::thread reader_, writer_;
};

}  // namespace p2prc::frp
