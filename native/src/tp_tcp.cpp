// Tensor parallelism across processes (tensor_parallel.h, TensorParallel.distInitAddr): the ranks of one group live
// in several processes (nodes) and reduce over TCP. Rank 0 listens at dist-init-addr; every other rank connects to
// it (retrying until the join timeout, so start order does not matter) and says hello {magic, size, rank}. Every
// collective is a star: each rank sends its contribution to rank 0, rank 0 combines the contributions in rank order
// and sends the result back. Summing in rank order starting from rank 0's values is the order the in-process group
// uses, so a group's results are bitwise the same whether its ranks share a process or not, and equal on every rank.
// Every socket wait is a poll() bounded by the group's timeout; a peer whose socket closes (its process died) fails
// the collective with LLM_ERR_TP_ABORTED naming that rank, and an abort shuts the sockets down so a rank blocked in
// poll() wakes at once. Peers must share a byte order: the hello's magic number catches a mismatch.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "backend.h"
#include "tp_tcp.h"

namespace dsg {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint32_t kMagic = 0x50545344;  // "DSTP" little-endian; byte-swapped when the peer's byte order differs

std::string secondsText(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", s);
  return buf;
}

/** host:port split at the last colon; throws LLM_ERR_CONFIG naming the address when malformed. */
std::pair<std::string, int> splitAddr(const std::string& addr) {
  const size_t colon = addr.rfind(':');
  const std::string what = "tp dist-init-addr \"" + addr + "\"";
  if (colon == std::string::npos || colon == 0 || colon + 1 == addr.size()) throw EngineError("LLM_ERR_CONFIG", what + " must be HOST:PORT");
  const std::string portText = addr.substr(colon + 1);
  for (char c : portText)
    if (c < '0' || c > '9') throw EngineError("LLM_ERR_CONFIG", what + " has a bad port");
  const long port = std::strtol(portText.c_str(), nullptr, 10);
  if (port < 1 || port > 65535) throw EngineError("LLM_ERR_CONFIG", what + ": port out of range [1, 65535]");
  return {addr.substr(0, colon), (int)port};
}

sockaddr_in resolve(const std::string& addr) {
  const auto [host, port] = splitAddr(addr);
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || !res) throw EngineError("LLM_ERR_CONFIG", "tp dist-init-addr \"" + addr + "\": cannot resolve " + host + ": " + gai_strerror(rc));
  sockaddr_in sa = *reinterpret_cast<sockaddr_in*>(res->ai_addr);
  freeaddrinfo(res);
  sa.sin_port = htons((uint16_t)port);
  return sa;
}

/** Thrown inside the group's I/O; the group turns it into an abort with this reason. */
struct Broken {
  std::string reason;
};

class TcpGroup;

/** Live cross-process groups of this process by name (an abort by name reaches them). */
struct TcpRegistry {
  std::mutex mutex;
  std::multimap<std::string, TcpGroup*> live;
};
TcpRegistry& tcpRegistry() {
  static TcpRegistry* r = new TcpRegistry();  // never destroyed: ranks may still leave during process exit
  return *r;
}

/** One rank's end of a cross-process group. Rank 0 holds a socket per peer (index = peer rank), a peer one socket to
 *  rank 0. Used by one thread (the rank's); abort() may come from any thread. */
class TcpGroup final : public TpGroup {
 public:
  TcpGroup(const TensorParallel& tp) : tp_(tp), fds_(tp.size, -1), vocab_(tp.size) {}

  ~TcpGroup() override {
    unregister();
    for (int& fd : fds_)
      if (fd >= 0) ::close(fd);
  }

  /** Connects the group (rank 0 accepts, the others connect), then swaps the vocab layouts. */
  void connect() {
    {
      TcpRegistry& reg = tcpRegistry();
      std::lock_guard<std::mutex> lock(reg.mutex);
      reg.live.emplace(tp_.group, this);
    }
    const Clock::time_point deadline = Clock::now() + timeout();
    guarded("join", [&] { tp_.rank == 0 ? acceptPeers(deadline) : connectToLeader(deadline); });
    const int32_t mine[2] = {tp_.shard.vocabStart, tp_.shard.vocabSize};
    const auto all = allGather(tp_.rank, mine, sizeof(mine));
    for (int r = 0; r < tp_.size; ++r) {
      int32_t v[2];
      std::memcpy(v, all[r].data(), sizeof(v));
      vocab_[r] = {v[0], v[1]};
      vocabTotal_ += v[1];
    }
  }

  /** Fails every wait now and later with the reason (the first stands); shuts the sockets so poll() wakes. */
  void abort(const std::string& reason) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (aborted_.load()) return;
      reason_ = reason;
      aborted_.store(true);
      for (int fd : fds_)
        if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
      if (listenFd_ >= 0) ::shutdown(listenFd_, SHUT_RDWR);
    }
  }

  int size() const override { return tp_.size; }

  void barrier(int rank) override { (void)allGather(rank, nullptr, 0); }

  std::vector<std::vector<uint8_t>> allGather(int rank, const void* data, size_t bytes) override {
    std::vector<std::vector<uint8_t>> out(tp_.size);
    guarded("allGather", [&] {
      const uint8_t* p = static_cast<const uint8_t*>(data);
      if (rank != 0) {
        sendFrame(0, p, bytes);
        std::vector<uint8_t> all = recvFrame(0, bytes * tp_.size, "allGather");
        for (int r = 0; r < tp_.size; ++r) out[r].assign(all.begin() + r * bytes, all.begin() + (r + 1) * bytes);
        return;
      }
      out[0].assign(p, p + bytes);
      for (int r = 1; r < tp_.size; ++r) out[r] = recvFrame(r, bytes, "allGather");
      std::vector<uint8_t> all;
      all.reserve(bytes * tp_.size);
      for (const auto& o : out) all.insert(all.end(), o.begin(), o.end());
      for (int r = 1; r < tp_.size; ++r) sendFrame(r, all.data(), all.size());
    });
    return out;
  }

  void allReduceSum(int rank, float* data, size_t n) override {
    guarded("allReduceSum", [&] {
      const size_t bytes = n * sizeof(float);
      if (rank != 0) {
        sendFrame(0, data, bytes);
        recvInto(0, data, bytes, "allReduceSum");
        return;
      }
      // Rank order from rank 0's own values: the in-process group's order, so both give the same bits.
      std::vector<float>& in = scratch_;
      in.resize(n);
      for (int r = 1; r < tp_.size; ++r) {
        recvInto(r, in.data(), bytes, "allReduceSum");
        for (size_t i = 0; i < n; ++i) data[i] += in[i];
      }
      for (int r = 1; r < tp_.size; ++r) sendFrame(r, data, bytes);
    });
  }

  void allGatherVocab(int rank, const float* mine, int64_t rows, float* out) override {
    guarded("allGatherVocab", [&] {
      const size_t outBytes = (size_t)rows * vocabTotal_ * sizeof(float);
      if (rank != 0) {
        sendFrame(0, mine, (size_t)rows * vocab_[rank].second * sizeof(float));
        recvInto(0, out, outBytes, "allGatherVocab");
        return;
      }
      std::vector<float>& in = scratch_;
      for (int r = 0; r < tp_.size; ++r) {
        const auto [start, count] = vocab_[r];
        const float* src = mine;
        if (r != 0) {
          in.resize((size_t)rows * count);
          recvInto(r, in.data(), in.size() * sizeof(float), "allGatherVocab");
          src = in.data();
        }
        for (int64_t row = 0; row < rows; ++row)
          std::memcpy(out + row * vocabTotal_ + start, src + row * count, (size_t)count * sizeof(float));
      }
      for (int r = 1; r < tp_.size; ++r) sendFrame(r, out, outBytes);
    });
  }

 private:
  std::chrono::steady_clock::duration timeout() const {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(tp_.timeoutSec));
  }

  void unregister() {
    TcpRegistry& reg = tcpRegistry();
    std::lock_guard<std::mutex> lock(reg.mutex);
    for (auto it = reg.live.begin(); it != reg.live.end(); ++it)
      if (it->second == this) {
        reg.live.erase(it);
        break;
      }
  }

  /** Runs one collective; any break (peer gone, timeout, abort) aborts the group and throws LLM_ERR_TP_ABORTED. */
  template <class F>
  void guarded(const char* what, F&& f) {
    if (aborted_.load()) throwAborted();
    try {
      f();
    } catch (const Broken& b) {
      abort("rank " + std::to_string(tp_.rank) + " in " + what + ": " + b.reason);
      throwAborted();
    }
  }

  [[noreturn]] void throwAborted() {
    std::lock_guard<std::mutex> lock(mutex_);
    throw EngineError("LLM_ERR_TP_ABORTED", "tensor-parallel group " + tp_.group + " aborted: " + reason_);
  }

  std::string peerName(int peer) const {
    return peer == 0 ? "rank 0 (the group's leader at " + tp_.distInitAddr + ")" : "rank " + std::to_string(peer);
  }

  /** Waits for fd to be ready for `events` until the group's timeout from now. */
  void waitFor(int fd, short events, int peer, const char* what) {
    const Clock::time_point deadline = Clock::now() + timeout();
    for (;;) {
      if (aborted_.load()) throw Broken{reason_};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) throw Broken{"waited " + secondsText(tp_.timeoutSec) + " s in " + what + " for " + peerName(peer)};
      pollfd p{fd, events, 0};
      const int rc = ::poll(&p, 1, (int)std::min<long long>(left, 1000));
      if (rc < 0 && errno != EINTR) throw Broken{std::string("poll failed: ") + std::strerror(errno)};
      if (rc > 0) return;
    }
  }

  void sendAll(int peer, const void* data, size_t bytes) {
    const int fd = fds_[peer];
    const uint8_t* p = static_cast<const uint8_t*>(data);
    while (bytes > 0) {
      waitFor(fd, POLLOUT, peer, "sending");
      const ssize_t n = ::send(fd, p, bytes, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
        brokenSocket(peer);
      }
      p += n;
      bytes -= (size_t)n;
    }
  }

  /** After a failed send or recv: the abort's reason, or the peer named as gone. */
  [[noreturn]] void brokenSocket(int peer) {
    const int err = errno;
    if (aborted_.load()) throw Broken{reason_};
    if (err == EPIPE || err == ECONNRESET) throw Broken{peerName(peer) + " closed its connection (its process ended or left the group)"};
    throw Broken{peerName(peer) + " is gone (" + std::strerror(err) + ")"};
  }

  void recvAll(int peer, void* data, size_t bytes, const char* what) {
    const int fd = fds_[peer];
    uint8_t* p = static_cast<uint8_t*>(data);
    while (bytes > 0) {
      waitFor(fd, POLLIN, peer, what);
      const ssize_t n = ::recv(fd, p, bytes, MSG_DONTWAIT);
      if (n == 0) {
        if (aborted_.load()) throw Broken{reason_};
        throw Broken{peerName(peer) + " closed its connection (its process ended or left the group)"};
      }
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
        brokenSocket(peer);
      }
      p += n;
      bytes -= (size_t)n;
    }
  }

  void sendFrame(int peer, const void* data, size_t bytes) {
    const uint64_t len = bytes;
    sendAll(peer, &len, sizeof(len));
    if (bytes) sendAll(peer, data, bytes);
  }

  /** A frame that must hold exactly `bytes` bytes: ranks disagreeing on a collective's size is a broken group. */
  void recvInto(int peer, void* data, size_t bytes, const char* what) {
    uint64_t len = 0;
    recvAll(peer, &len, sizeof(len), what);
    if (len != bytes)
      throw Broken{peerName(peer) + " sent " + std::to_string(len) + " bytes in " + what + ", expected " + std::to_string(bytes)};
    if (bytes) recvAll(peer, data, bytes, what);
  }

  std::vector<uint8_t> recvFrame(int peer, size_t bytes, const char* what) {
    std::vector<uint8_t> v(bytes);
    recvInto(peer, v.data(), bytes, what);
    return v;
  }

  static void tune(int fd) {
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  }

  /** Rank 0: listens at dist-init-addr and accepts every other rank's hello until all came or the deadline. */
  void acceptPeers(Clock::time_point deadline) {
    const sockaddr_in sa = resolve(tp_.distInitAddr);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      listenFd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    }
    if (listenFd_ < 0) throw Broken{std::string("socket: ") + std::strerror(errno)};
    const int one = 1;
    ::setsockopt(listenFd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(listenFd_, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0 || ::listen(listenFd_, tp_.size) != 0)
      throw Broken{"cannot listen at " + tp_.distInitAddr + ": " + std::strerror(errno)};
    ::fcntl(listenFd_, F_SETFL, ::fcntl(listenFd_, F_GETFL) | O_NONBLOCK);
    int joined = 1;
    while (joined < tp_.size) {
      if (aborted_.load()) throw Broken{reason_};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) throw Broken{"waited " + secondsText(tp_.timeoutSec) + " s at " + tp_.distInitAddr + " for rank(s) " + missingPeers()};
      pollfd p{listenFd_, POLLIN, 0};
      if (::poll(&p, 1, (int)std::min<long long>(left, 1000)) <= 0) continue;
      const int fd = ::accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      tune(fd);
      // The hello is 12 bytes sent right after connecting; read it with the join's deadline on this socket alone.
      int32_t hello[3] = {0, 0, 0};
      size_t got = 0;
      while (got < sizeof(hello) && Clock::now() < deadline && !aborted_.load()) {
        pollfd q{fd, POLLIN, 0};
        if (::poll(&q, 1, 200) <= 0) continue;
        const ssize_t n = ::recv(fd, reinterpret_cast<uint8_t*>(hello) + got, sizeof(hello) - got, MSG_DONTWAIT);
        if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EINTR))) break;
        if (n > 0) got += (size_t)n;
      }
      std::string refusal;
      if (got != sizeof(hello) || (uint32_t)hello[0] != kMagic)
        refusal = "not a tensor-parallel hello (another program, or a peer of another byte order)";
      else if (hello[1] != tp_.size)
        refusal = "rank " + std::to_string(hello[2]) + " says the group has " + std::to_string(hello[1]) + " ranks, rank 0 has " + std::to_string(tp_.size);
      else if (hello[2] < 1 || hello[2] >= tp_.size)
        refusal = "rank " + std::to_string(hello[2]) + " out of range [1, " + std::to_string(tp_.size) + ")";
      else if (fds_[hello[2]] >= 0)
        refusal = "rank " + std::to_string(hello[2]) + " joined twice";
      if (!refusal.empty()) {
        ::close(fd);
        if (got == sizeof(hello) && (uint32_t)hello[0] == kMagic) throw Broken{refusal};
        continue;  // a stray connection (a port scanner, a health probe) does not break the group
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        fds_[hello[2]] = fd;
      }
      ++joined;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    ::close(listenFd_);  // the port is free for the group's next start
    listenFd_ = -1;
  }

  std::string missingPeers() const {
    std::string s;
    for (int r = 1; r < tp_.size; ++r)
      if (fds_[r] < 0) s += (s.empty() ? "" : ", ") + std::to_string(r);
    return s;
  }

  /** Rank > 0: connects to rank 0, retrying until the deadline (rank 0 may start later), and says hello. */
  void connectToLeader(Clock::time_point deadline) {
    const sockaddr_in sa = resolve(tp_.distInitAddr);
    std::string last = "no answer";
    for (;;) {
      if (aborted_.load()) throw Broken{reason_};
      if (Clock::now() >= deadline)
        throw Broken{"waited " + secondsText(tp_.timeoutSec) + " s for rank 0 (the group's leader) at " + tp_.distInitAddr + ": " + last};
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) throw Broken{std::string("socket: ") + std::strerror(errno)};
      if (::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) == 0) {
        tune(fd);
        {
          std::lock_guard<std::mutex> lock(mutex_);
          fds_[0] = fd;
        }
        const int32_t hello[3] = {(int32_t)kMagic, tp_.size, tp_.rank};
        sendAll(0, hello, sizeof(hello));
        return;
      }
      last = std::strerror(errno);
      ::close(fd);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  const TensorParallel tp_;
  std::vector<int> fds_;                       // by peer rank; rank > 0 uses fds_[0] only
  int listenFd_ = -1;                          // rank 0 while joining
  std::vector<std::pair<int, int>> vocab_;     // each rank's {vocabStart, vocabSize}
  int64_t vocabTotal_ = 0;
  std::vector<float> scratch_;
  std::mutex mutex_;                           // fds_ / listenFd_ against abort()'s shutdown, reason_
  std::atomic<bool> aborted_{false};
  std::string reason_;
};

}  // namespace

std::shared_ptr<TpGroup> joinTcpGroup(const TensorParallel& tp) {
  splitAddr(tp.distInitAddr);  // a malformed address is a config error, not an abort
  auto g = std::make_shared<TcpGroup>(tp);
  g->connect();
  return g;
}

void abortTcpGroup(const std::string& group, const std::string& reason) {
  TcpRegistry& reg = tcpRegistry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  auto [lo, hi] = reg.live.equal_range(group);
  for (auto it = lo; it != hi; ++it) it->second->abort(reason);
}

}  // namespace dsg
