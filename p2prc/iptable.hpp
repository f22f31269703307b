// The IP table: the servers a node knows, as a JSON file.
//
// The file is never left half-written: save() writes a temporary file in the same folder,
// fsyncs it, renames it over the old one and fsyncs the folder, so a crash at any point
// leaves either the old or the new table. update() adds an advisory lock (flock on a
// sidecar "<path>.lock") around load, change and save, so processes sharing one table
// file lose nothing. A save first removes the temporaries that saves killed midway left
// behind, and writes the file compactly, one entry a line, unless asked to indent it.
#pragma once

#include "address.hpp"
#include "error.hpp"
#include "peer.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace p2prc {

struct TableLimits {
    std::size_t max_bytes = 256u << 20;  // a table file or document larger than this is refused
    std::size_t max_entries = 2'000'000;
    std::size_t max_depth = 64;          // JSON nesting; a table needs 3 levels plus extras
    PeerLimits peer;
};

namespace detail {

inline std::string errno_text(int e) { return std::strerror(e); }

[[noreturn]] inline void throw_io(const std::string& what, const std::string& path, int e) {
    throw error(errc::io_error, what + " " + path + ": " + errno_text(e));
}

// Refuses nesting deeper than max_depth before the JSON parser sees the text, so a
// hostile document ("[[[[..." 100,000 deep) costs one linear scan and no recursion.
// With max_items, also refuses more than that many values in the containers at depth 2
// (a table's "ip_address" array), so a document of millions of tiny entries is refused
// before it costs memory.
inline void check_json_depth(std::string_view text, std::size_t max_depth, const std::string& origin,
                             std::size_t max_items = 0) {
    std::size_t depth = 0, items = 0;
    bool in_string = false, escaped = false;
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (in_string) {
            if (escaped) escaped = false;
            else if (c == '\\') escaped = true;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth)
                throw error(errc::parse_error, origin + ": JSON nested deeper than " +
                                                   std::to_string(max_depth) + " levels at byte " +
                                                   std::to_string(i));
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        } else if (c == ',' && depth == 2 && max_items && ++items >= max_items) {
            throw error(errc::limit_exceeded, origin + ": more than the limit of " +
                                                  std::to_string(max_items) + " entries");
        }
    }
}

inline std::string line_column(std::string_view text, std::size_t byte);

// Parses JSON text after the depth check; a syntax error becomes p2prc::error naming
// `origin`, the line and column, and what the parser expected.
inline nlohmann::json parse_json_bounded(std::string_view text, std::size_t max_depth,
                                         const std::string& origin, std::size_t max_items = 0) {
    check_json_depth(text, max_depth, origin, max_items);
    try {
        return nlohmann::json::parse(text.begin(), text.end());
    } catch (const nlohmann::json::parse_error& e) {
        throw error(errc::parse_error, origin + ": invalid JSON at " +
                                           line_column(text, e.byte ? e.byte - 1 : 0) + " (byte " +
                                           std::to_string(e.byte) + "): " + e.what());
    } catch (const nlohmann::json::exception& e) {
        // Valid syntax the parser still refuses, e.g. a number beyond double (1e999).
        throw error(errc::parse_error, origin + ": unusable JSON: " + e.what());
    }
}

// For small documents from the network (answers, request bodies): nlohmann's
// "discarded" value when the text is longer than max_bytes, nested deeper than
// max_depth, or not JSON; the depth is checked by a scan before anything is built.
inline nlohmann::json parse_json_small(std::string_view text, std::size_t max_bytes = 64u << 10,
                                       std::size_t max_depth = 8) {
    if (text.size() > max_bytes) return nlohmann::json::value_t::discarded;
    try {
        check_json_depth(text, max_depth, "JSON");
    } catch (const error&) {
        return nlohmann::json::value_t::discarded;
    }
    return nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
}

inline std::string line_column(std::string_view text, std::size_t byte) {
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i < byte && i < text.size(); ++i) {
        if (text[i] == '\n') ++line, col = 1;
        else ++col;
    }
    return "line " + std::to_string(line) + ", column " + std::to_string(col);
}

// A file descriptor that closes itself.
class Fd {
public:
    explicit Fd(int fd = -1) noexcept : fd_(fd) {}
    Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    Fd& operator=(Fd&& o) noexcept {
        if (this != &o) reset(std::exchange(o.fd_, -1));
        return *this;
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() { reset(); }
    int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }
    void reset(int fd = -1) noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }
    int release() noexcept { return std::exchange(fd_, -1); }

private:
    int fd_;
};

inline std::string parent_dir(const std::string& path) {
    auto slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

// Writes `data` to `path` atomically and durably (see the file comment).
inline void write_file_atomic(const std::string& path, std::string_view data, mode_t mode = 0644) {
    std::string tmpl = path + ".tmp.XXXXXX";
    Fd fd(::mkstemp(tmpl.data()));
    if (!fd) throw_io("cannot create a temporary file for", path, errno);
    bool renamed = false;
    struct Cleanup {
        const std::string& name;
        bool& done;
        ~Cleanup() {
            if (!done) ::unlink(name.c_str());
        }
    } cleanup{tmpl, renamed};
    const char* p = data.data();
    std::size_t left = data.size();
    while (left > 0) {
        ssize_t n = ::write(fd.get(), p, left);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_io("cannot write", tmpl, errno);
        }
        p += n;
        left -= static_cast<std::size_t>(n);
    }
    if (::fchmod(fd.get(), mode) != 0) throw_io("cannot set the mode of", tmpl, errno);
    if (::fsync(fd.get()) != 0) throw_io("cannot fsync", tmpl, errno);
    if (::close(fd.release()) != 0) throw_io("cannot close", tmpl, errno);
    if (::rename(tmpl.c_str(), path.c_str()) != 0) throw_io("cannot rename a temporary file to", path, errno);
    renamed = true;
    // The rename is durable only once the folder is.
    Fd dir(::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dir && ::fsync(dir.get()) != 0 && errno != EINVAL)
        throw_io("cannot fsync the folder of", path, errno);
}

// Removes the temporaries write_file_atomic(path) left behind when a process died
// mid-save ("<path>.tmp.XXXXXX", mkstemp's six characters): only regular files of ours,
// last written more than `min_age` ago (a younger one may be another process's save in
// progress). Returns how many were removed; a folder that cannot be read removes none.
inline std::size_t remove_stale_temporaries(
    const std::string& path, std::chrono::seconds min_age = std::chrono::seconds(60)) {
    const std::string dir = parent_dir(path);
    const auto slash = path.rfind('/');
    const std::string prefix =
        (slash == std::string::npos ? path : path.substr(slash + 1)) + ".tmp.";
    DIR* d = ::opendir(dir.c_str());
    if (!d) return 0;
    std::size_t removed = 0;
    const auto now = std::chrono::system_clock::now();
    while (dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name.size() != prefix.size() + 6 || name.compare(0, prefix.size(), prefix) != 0)
            continue;
        bool six = true;
        for (std::size_t i = prefix.size(); i < name.size(); ++i) {
            const char c = name[i];
            six =
                six && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'));
        }
        if (!six) continue;
        const std::string full = (dir == "/" ? "" : dir) + "/" + name;
        struct stat st {};
        if (::lstat(full.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid())
            continue;
        const auto written = std::chrono::system_clock::from_time_t(st.st_mtime);
        if (now - written < min_age) continue;
        if (::unlink(full.c_str()) == 0) ++removed;
    }
    ::closedir(d);
    return removed;
}

// Reads a whole file; nullopt when it does not exist.
inline std::optional<std::string> read_file(const std::string& path, std::size_t max_bytes) {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
        if (errno == ENOENT) return std::nullopt;
        throw_io("cannot open", path, errno);
    }
    struct stat st{};
    if (::fstat(fd.get(), &st) != 0) throw_io("cannot stat", path, errno);
    if (S_ISDIR(st.st_mode)) throw error(errc::io_error, "cannot read " + path + ": it is a folder");
    std::string out;
    char buf[1 << 16];
    for (;;) {
        ssize_t n = ::read(fd.get(), buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_io("cannot read", path, errno);
        }
        if (n == 0) break;
        if (out.size() + static_cast<std::size_t>(n) > max_bytes)
            throw error(errc::limit_exceeded, "cannot read " + path + ": larger than the limit of " +
                                                  std::to_string(max_bytes) + " bytes");
        out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
}

// An exclusive flock on a sidecar file, waited for up to `timeout`.
class FileLock {
public:
    FileLock(const std::string& path, std::chrono::milliseconds timeout) {
        fd_.reset(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
        if (!fd_) throw_io("cannot open the lock file", path, errno);
        auto deadline = std::chrono::steady_clock::now() + timeout;
        // Short, jittered pauses: a waiter must not lose every race to a holder that
        // re-locks at once (long pauses would starve it).
        std::uint64_t jitter = static_cast<std::uint64_t>(::getpid()) * 2654435761u;
        while (::flock(fd_.get(), LOCK_EX | LOCK_NB) != 0) {
            if (errno != EWOULDBLOCK && errno != EINTR) throw_io("cannot lock", path, errno);
            if (std::chrono::steady_clock::now() >= deadline)
                throw error(errc::timeout, "cannot lock " + path + ": another process holds it");
            jitter = jitter * 6364136223846793005ull + 1442695040888963407ull;
            std::this_thread::sleep_for(std::chrono::microseconds(100 + (jitter >> 33) % 900));
        }
    }
    ~FileLock() {
        if (fd_) ::flock(fd_.get(), LOCK_UN);
    }
    FileLock(const FileLock&) = delete;
    FileLock& operator=(const FileLock&) = delete;

private:
    Fd fd_;
};

// Whether two entries may describe one server: not when both name different identities.
inline bool identities_compatible(const Peer& a, const Peer& b) {
    return a.identity.empty() || b.identity.empty() || a.identity == b.identity;
}

// Copies what `incoming` knows into `kept` (both describe one server). Measurements go
// to the fresher side; facts go to `incoming` when it states them (it is the newer word),
// except that an entry without the server's signature never overrides one with it (nor an
// older signed word a newer one). The endpoint to contact stays the one this node reaches
// best (the measured, nearer side); the other side's endpoints are kept as alternatives.
inline void merge_peer(Peer& kept, Peer&& incoming) {
    const bool kept_signed = kept.signed_entry.has_value();
    const bool incoming_newer_word =
        incoming.signed_entry &&
        (!kept_signed || incoming.signed_entry->seq >= kept.signed_entry->seq);
    const bool take_facts = !kept_signed || incoming_newer_word;

    // Endpoints first (before the measurements are merged: they say which side is nearer).
    const bool same_primary = [&] {
        bool any = false;
        if (incoming.ipv4 && kept.ipv4 && *incoming.ipv4 == *kept.ipv4 &&
            incoming.server_port == kept.server_port)
            any = true;
        if (incoming.ipv6 && kept.ipv6 && *incoming.ipv6 == *kept.ipv6 &&
            incoming.server_port == kept.server_port)
            any = true;
        return any;
    }();
    if (same_primary || (!kept.ipv4 && !kept.ipv6)) {
        if (incoming.server_port == kept.server_port || (!kept.ipv4 && !kept.ipv6)) {
            if (!kept.ipv4 && !kept.ipv6) kept.server_port = incoming.server_port;
            if (!kept.ipv4) kept.ipv4 = incoming.ipv4;
            if (!kept.ipv6) kept.ipv6 = incoming.ipv6;
        }
        for (const auto& e : incoming.alt_endpoints) kept.add_alt(e);
    } else {
        const bool incoming_nearer =
            incoming.latency_ms && (!kept.latency_ms || *incoming.latency_ms < *kept.latency_ms);
        if (incoming_nearer) {
            // Swap roles: incoming's primary becomes the entry's, kept's goes to the alternatives.
            std::vector<Endpoint> old = kept.endpoints();
            kept.ipv4 = incoming.ipv4;
            kept.ipv6 = incoming.ipv6;
            kept.server_port = incoming.server_port;
            kept.alt_endpoints.clear();
            for (const auto& e : incoming.alt_endpoints) kept.add_alt(e);
            for (const auto& e : old) kept.add_alt(e);
        } else {
            incoming.for_each_endpoint([&](const Endpoint& e) { kept.add_alt(e); });
        }
    }

    bool fresher = incoming.measured_at.value_or(0) >= kept.measured_at.value_or(0);
    if (fresher) {
        if (incoming.latency_ms) kept.latency_ms = incoming.latency_ms;
        if (incoming.download_mbps) kept.download_mbps = incoming.download_mbps;
        if (incoming.upload_mbps) kept.upload_mbps = incoming.upload_mbps;
        if (incoming.measured_at) kept.measured_at = incoming.measured_at;
    } else {
        if (!kept.latency_ms) kept.latency_ms = incoming.latency_ms;
        if (!kept.download_mbps) kept.download_mbps = incoming.download_mbps;
        if (!kept.upload_mbps) kept.upload_mbps = incoming.upload_mbps;
    }
    if (kept.identity.empty()) kept.identity = incoming.identity;
    if (incoming_newer_word) kept.signed_entry = std::move(incoming.signed_entry);
    if (!take_facts) return;
    auto take = [](std::string& to, std::string& from) {
        if (!from.empty()) to = std::move(from);
    };
    take(kept.name, incoming.name);
    take(kept.escape_implementation, incoming.escape_implementation);
    take(kept.machine_username, incoming.machine_username);
    take(kept.udp_server_port, incoming.udp_server_port);
    take(kept.bare_metal_ssh_port, incoming.bare_metal_ssh_port);
    take(kept.public_key, incoming.public_key);
    take(kept.custom_information, incoming.custom_information);
    kept.nat = incoming.nat;
    kept.proxy_server = incoming.proxy_server;
    kept.unsafe_mode = incoming.unsafe_mode;
    for (auto it = incoming.extra.begin(); it != incoming.extra.end(); ++it)
        kept.extra[it.key()] = std::move(it.value());
}

}  // namespace detail

// How save() lays the file out: compact with one entry a line (the default), or indented.
enum class TableStyle { lines, pretty };

class IpTable {
public:
    IpTable() = default;
    explicit IpTable(std::vector<Peer> peers) : peers_(std::move(peers)) {}

    // Reads a table file. A missing file is an empty table; an unreadable or corrupt
    // file throws p2prc::error naming the file, the position and what was expected.
    // Entries are kept as written (call dedupe() to fold duplicates).
    static IpTable load(const std::string& path, const TableLimits& limits = {}) {
        auto text = detail::read_file(path, limits.max_bytes);
        if (!text) return IpTable();
        return parse(*text, path, limits);
    }

    // Reads a table from text; `origin` names it in errors.
    static IpTable parse(std::string_view text, const std::string& origin = "IP table",
                         const TableLimits& limits = {}) {
        if (text.size() > limits.max_bytes)
            throw error(errc::limit_exceeded, origin + ": " + std::to_string(text.size()) +
                                                  " bytes, larger than the limit of " +
                                                  std::to_string(limits.max_bytes));
        if (text.find_first_not_of(" \t\r\n") == std::string_view::npos)
            throw error(errc::parse_error, origin + ": empty: expected a JSON object with an \"ip_address\" array");
        return from_json(detail::parse_json_bounded(text, limits.max_depth, origin, limits.max_entries), origin,
                         limits);
    }

    // Reads a parsed document ({"ip_address":[...]}).
    static IpTable from_json(const nlohmann::json& doc, const std::string& origin = "IP table",
                             const TableLimits& limits = {}) {
        if (!doc.is_object())
            throw error(errc::parse_error, origin + ": expected a JSON object with an \"ip_address\" array "
                                                    "at the top level, found " + detail::json_type_name(doc));
        IpTable t;
        auto it = doc.find("ip_address");
        if (it == doc.end() || it->is_null()) return t;
        if (!it->is_array())
            throw error(errc::parse_error, origin + ": \"ip_address\" must be an array, found " +
                                               detail::json_type_name(*it));
        if (it->size() > limits.max_entries)
            throw error(errc::limit_exceeded, origin + ": " + std::to_string(it->size()) +
                                                  " entries, more than the limit of " +
                                                  std::to_string(limits.max_entries));
        t.peers_.reserve(it->size());
        std::size_t i = 0;
        for (const auto& entry : *it)
            t.peers_.push_back(peer_from_json(entry, origin + ": entry " + std::to_string(i++), limits.peer));
        return t;
    }

    nlohmann::json to_json(TableFormat format = TableFormat::seed) const {
        nlohmann::json arr = nlohmann::json::array();
        for (const auto& p : peers_) arr.push_back(peer_to_json(p, format));
        return nlohmann::json{{"ip_address", std::move(arr)}};
    }

    // JSON text; the seed's format unless P2PRC's is asked for.
    std::string dump(TableFormat format = TableFormat::seed, int indent = 2) const {
        return to_json(format).dump(indent) + (indent >= 0 ? "\n" : "");
    }

    // The file's text: compact with one entry a line (small, and diffs stay readable),
    // or indented.
    std::string file_text(TableFormat format = TableFormat::seed,
                          TableStyle style = TableStyle::lines) const {
        if (style == TableStyle::pretty) return dump(format, 2);
        std::string out = "{\"ip_address\":[";
        for (std::size_t i = 0; i < peers_.size(); ++i) {
            out += i == 0 ? "\n" : ",\n";
            out += peer_to_json(peers_[i], format).dump();
        }
        out += peers_.empty() ? "]}\n" : "\n]}\n";
        return out;
    }

    // Writes the table atomically and durably (see the file comment), after removing the
    // temporaries that saves killed midway left behind.
    void save(const std::string& path, TableFormat format = TableFormat::seed,
              TableStyle style = TableStyle::lines) const {
        detail::remove_stale_temporaries(path);
        detail::write_file_atomic(path, file_text(format, style));
    }

    // Removes stale "<path>.tmp.XXXXXX" files of this table (older than a minute, ours);
    // save() does it too. Returns how many were removed.
    static std::size_t remove_stale_temporaries(const std::string& path) {
        return detail::remove_stale_temporaries(path);
    }

    // Locks "<path>.lock", loads, calls fn(table), saves, unlocks. If fn throws, nothing
    // is written. Safe across processes and threads (each call opens its own lock).
    static IpTable update(const std::string& path, const std::function<void(IpTable&)>& fn,
                          TableFormat format = TableFormat::seed,
                          std::chrono::milliseconds lock_timeout = std::chrono::seconds(30),
                          const TableLimits& limits = {}, TableStyle style = TableStyle::lines) {
        detail::FileLock lock(path + ".lock", lock_timeout);
        IpTable t = load(path, limits);
        fn(t);
        t.save(path, format, style);
        return t;
    }

    const std::vector<Peer>& peers() const& noexcept { return peers_; }
    // On a temporary (`for (auto& p : IpTable::load(f).peers())`) the peers move out, so
    // the loop does not walk a destroyed table.
    std::vector<Peer> peers() && noexcept { return std::move(peers_); }
    std::size_t size() const noexcept { return peers_.size(); }
    bool empty() const noexcept { return peers_.empty(); }

    // Adds a server, or updates the entry that already describes it (same IPv4 and port,
    // or same IPv6 and port). Returns true when it was new. Throws when it has no address
    // or no port.
    bool add(Peer peer) {
        check_contactable(peer);
        std::optional<std::size_t> at;
        for (std::size_t i = 0; i < peers_.size() && !at; ++i)
            if (same_server(peers_[i], peer)) at = i;
        if (!at) {
            peers_.push_back(std::move(peer));
            return true;
        }
        detail::merge_peer(peers_[*at], std::move(peer));
        dedupe();  // the update may have joined two entries (one knew IPv4, one IPv6)
        return false;
    }

    // Adds every server of `other`; entries for one server become one. O(n + m).
    void merge(const IpTable& other) {
        peers_.reserve(peers_.size() + other.size());
        peers_.insert(peers_.end(), other.peers_.begin(), other.peers_.end());
        dedupe();
    }
    void merge(IpTable&& other) {
        peers_.reserve(peers_.size() + other.size());
        peers_.insert(peers_.end(), std::make_move_iterator(other.peers_.begin()),
                      std::make_move_iterator(other.peers_.end()));
        dedupe();
    }

    // Folds entries that describe one server into the first of them, keeping the freshest
    // measurements, and drops entries behind NAT whose escape implementation is "None"
    // (nobody can reach them), as P2PRC does. Entries with the same identity are one
    // server, whatever their addresses; otherwise, as in P2PRC, entries sharing an endpoint
    // (IPv4 or IPv6 with the port) are one, unless they name different identities.
    // O(n) with hash indexes on identities and normalised endpoints. Returns how many went.
    std::size_t dedupe() {
        const std::size_t before = peers_.size();
        // In place: entry i either registers its endpoints or folds into an earlier entry
        // and dies; one compaction at the end, no second copy of the table. A folded slot
        // forwards to the one it went into (union-find), so index entries that still name
        // it resolve to the living entry.
        std::vector<std::size_t> owner(before);
        for (std::size_t i = 0; i < before; ++i) owner[i] = i;
        auto resolve = [&](std::size_t j) {
            while (owner[j] != j) j = owner[j] = owner[owner[j]];
            return j;
        };
        std::vector<bool> dead(before, false);
        std::unordered_map<Endpoint, std::size_t> index;
        index.reserve(before + before / 2);
        std::unordered_map<std::string, std::size_t> by_identity;
        for (std::size_t i = 0; i < before; ++i) {
            Peer& p = peers_[i];
            if (p.nat && p.escape_implementation == "None") {
                dead[i] = true;
                continue;
            }
            std::optional<std::size_t> at;
            auto join = [&](std::size_t j) {
                if (!at) {
                    at = j;
                } else if (*at != j && detail::identities_compatible(peers_[*at], peers_[j])) {
                    // p joins two earlier entries: fold the later one into the earlier one.
                    std::size_t keep = std::min(*at, j), drop = std::max(*at, j);
                    detail::merge_peer(peers_[keep], std::move(peers_[drop]));
                    dead[drop] = true;
                    owner[drop] = keep;
                    at = keep;
                }
            };
            if (!p.identity.empty()) {
                auto it = by_identity.find(p.identity);
                if (it != by_identity.end()) join(resolve(it->second));
            }
            p.for_each_endpoint([&](const Endpoint& e) {
                auto it = index.find(e);
                if (it == index.end()) return;
                std::size_t j = resolve(it->second);
                if (!detail::identities_compatible(p, peers_[j])) return;  // another server
                if (at && !detail::identities_compatible(peers_[*at], peers_[j])) return;
                join(j);
            });
            if (at) {
                detail::merge_peer(peers_[*at], std::move(p));
                dead[i] = true;
                owner[i] = *at;
            } else {
                at = i;
            }
            peers_[*at].for_each_endpoint([&](const Endpoint& e) { index[e] = *at; });
            if (!peers_[*at].identity.empty()) by_identity[peers_[*at].identity] = *at;
        }
        std::size_t kept = 0;
        for (std::size_t i = 0; i < before; ++i)
            if (!dead[i]) {
                if (kept != i) peers_[kept] = std::move(peers_[i]);
                ++kept;
            }
        peers_.resize(kept);
        return before - peers_.size();
    }

    // Removes the node itself, named by its identity: the entries with `own_identity`, and
    // entries without identity reachable under one of `own` (as remove_self(own) does). An entry
    // of another identity is another server, even at an endpoint the node also has (two
    // LANs, one private address): it only loses that endpoint (and goes when none is left).
    std::size_t remove_self(const std::vector<Endpoint>& own, std::string_view own_identity) {
        std::unordered_map<Endpoint, bool> mine;
        for (const auto& e : own) mine[e] = true;
        return remove_if([&](Peer& p) {
            if (!own_identity.empty() && p.identity == own_identity) return true;
            if (p.identity.empty()) {
                bool self = false;
                p.for_each_endpoint([&](const Endpoint& e) { self = self || mine.count(e) > 0; });
                return self;
            }
            std::vector<Endpoint> keep;
            for (const auto& e : p.endpoints())
                if (!mine.count(e)) keep.push_back(e);
            if (keep.empty()) return true;
            if (keep.size() != p.endpoints().size()) {
                p.alt_endpoints.clear();
                p.ipv4.reset();
                p.ipv6.reset();
                (keep.front().address.is_v4() ? p.ipv4 : p.ipv6) = keep.front().address;
                p.server_port = keep.front().port;
                for (std::size_t i = 1; i < keep.size(); ++i) p.add_alt(keep[i]);
            }
            return false;
        });
    }

    // Removes the entries of the server with this identity (the node itself).
    std::size_t remove_identity(std::string_view id) {
        if (id.empty()) return 0;
        return remove_if([&](const Peer& p) { return p.identity == id; });
    }

    // The entry of the server with this identity, or nullptr.
    Peer* find_identity(std::string_view id) {
        if (id.empty()) return nullptr;
        for (auto& p : peers_)
            if (p.identity == id) return &p;
        return nullptr;
    }
    const Peer* find_identity(std::string_view id) const {
        return const_cast<IpTable*>(this)->find_identity(id);
    }

    // Removes every entry reachable under one of the node's own endpoints.
    std::size_t remove_self(const std::vector<Endpoint>& own) {
        std::unordered_map<Endpoint, bool> mine;
        for (const auto& e : own) mine[e] = true;
        return remove_if([&](const Peer& p) {
            for (const auto& e : p.endpoints())
                if (mine.count(e)) return true;
            return false;
        });
    }

    // Removes the entries whose name is `key`, or that are reachable at endpoint `key`
    // ("1.2.3.4:8078", "[::1]:8078"). Returns how many went.
    std::size_t remove(std::string_view key) {
        return remove_if([&](const Peer& p) { return matches(p, key); });
    }

    template <class Pred>
    std::size_t remove_if(Pred pred) {
        auto end = std::remove_if(peers_.begin(), peers_.end(), pred);
        std::size_t n = static_cast<std::size_t>(peers_.end() - end);
        peers_.erase(end, peers_.end());
        return n;
    }

    // The first entry with that name or endpoint, or nullptr. Changing the address or
    // port through the pointer is allowed; call dedupe() afterwards.
    Peer* find(std::string_view key) {
        for (auto& p : peers_)
            if (matches(p, key)) return &p;
        return nullptr;
    }
    const Peer* find(std::string_view key) const { return const_cast<IpTable*>(this)->find(key); }

    // Measured peers first, fastest first; unmeasured ones keep their order at the end.
    void sort_by_latency() {
        std::stable_sort(peers_.begin(), peers_.end(), [](const Peer& a, const Peer& b) {
            if (a.latency_ms && b.latency_ms) return *a.latency_ms < *b.latency_ms;
            return a.latency_ms.has_value() && !b.latency_ms.has_value();
        });
    }

    // The measured peer with the lowest latency that passes `pred`; never an unmeasured one.
    template <class Pred>
    std::optional<Peer> lowest_latency(Pred pred) const {
        const Peer* best = nullptr;
        for (const auto& p : peers_)
            if (p.latency_ms && (!best || *p.latency_ms < *best->latency_ms) && pred(p)) best = &p;
        if (!best) return std::nullopt;
        return *best;
    }
    std::optional<Peer> lowest_latency() const {
        return lowest_latency([](const Peer&) { return true; });
    }

    // One server: the same identity; or, unless they name different identities, a shared
    // endpoint (P2PRC's rule: same IPv4 and port, or same IPv6 and port).
    static bool same_server(const Peer& a, const Peer& b) {
        if (!a.identity.empty() && a.identity == b.identity) return true;
        if (!detail::identities_compatible(a, b)) return false;
        bool shared = false;
        a.for_each_endpoint([&](const Endpoint& e) {
            if (!shared) b.for_each_endpoint([&](const Endpoint& f) { shared = shared || e == f; });
        });
        return shared;
    }

private:
    static bool matches(const Peer& p, std::string_view key) {
        if (auto e = Endpoint::parse(key)) {
            for (const auto& own : p.endpoints())
                if (own == *e) return true;
            return false;
        }
        return !p.name.empty() && p.name == key;
    }

    static void check_contactable(const Peer& p) {
        if (!p.ipv4 && !p.ipv6)
            throw error(errc::invalid_argument, "peer " + detail::quote_for_error(p.name) + " has no address");
        if (p.server_port == 0)
            throw error(errc::invalid_argument, "peer " + p.label() + " has no server port");
    }

    std::vector<Peer> peers_;
};

}  // namespace p2prc
