// A C interface to libtorch's c10d for ponder's data-parallel learner: a TCPStore rendezvous,
// a ProcessGroupGloo, and the collectives the learner needs. Every entry point catches C++
// exceptions and returns them as a message (freed with ponder_dist_free_str); every wait
// is bounded by the group's timeout.
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#include <ATen/ATen.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

char* dup(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;
  std::chrono::milliseconds timeout;
};

template <class F>
int guard(char** err, F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    *err = dup(e.what());
  } catch (...) {
    *err = dup("unknown C++ exception");
  }
  return 1;
}

void wait(Group* g, const c10::intrusive_ptr<c10d::Work>& w) {
  if (!w->wait(g->timeout)) {
    throw std::runtime_error("collective did not finish within the timeout");
  }
}

}  // namespace

extern "C" {

int ponder_dist_has_gloo() {
#ifdef USE_C10D_GLOO
  return 1;
#else
  return 0;
#endif
}

// `iface`: a network interface to bind Gloo to ("" = this host's name, else loopback).
void* ponder_dist_new(const char* host, int port, int rank, int world, long long timeout_ms, const char* iface, char** err) {
#ifndef USE_C10D_GLOO
  (void)host; (void)port; (void)rank; (void)world; (void)timeout_ms; (void)iface;
  *err = dup("this build of ponder has no Gloo: scripts/setup-libtorch.sh fetches its headers (Debian's libgloo-dev) "
             "with apt-get; run it on a Debian or Ubuntu host, then rebuild");
  return nullptr;
#else
  Group* g = nullptr;
  guard(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(port);
    o.isServer = rank == 0;
    o.numWorkers = static_cast<std::size_t>(world);
    o.waitWorkers = true;
    o.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    std::string i(iface);
    opts->devices.push_back(i.empty() ? c10d::ProcessGroupGloo::createDefaultDevice()
                                      : c10d::ProcessGroupGloo::createDeviceForInterface(i));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    g = new Group{store, pg, timeout};
  });
  return g;
#endif
}

void ponder_dist_free(void* g) { delete static_cast<Group*>(g); }

void ponder_dist_free_str(char* s) { std::free(s); }

int ponder_dist_all_reduce_sum(void* gp, at::Tensor* t, char** err) {
  auto g = static_cast<Group*>(gp);
  return guard(err, [&] {
    std::vector<at::Tensor> v{*t};
    wait(g, g->pg->allreduce(v));
  });
}

int ponder_dist_broadcast(void* gp, at::Tensor* t, int root, char** err) {
  auto g = static_cast<Group*>(gp);
  return guard(err, [&] {
    std::vector<at::Tensor> v{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    wait(g, g->pg->broadcast(v, o));
  });
}

// `out` holds world x the elements of `in`, rank r's part at r.
int ponder_dist_all_gather(void* gp, at::Tensor* out, at::Tensor* in, char** err) {
  auto g = static_cast<Group*>(gp);
  return guard(err, [&] { wait(g, g->pg->_allgather_base(*out, *in)); });
}

// `in` holds world parts; rank r gets the sum over ranks of part r in `out`.
int ponder_dist_reduce_scatter_sum(void* gp, at::Tensor* out, at::Tensor* in, char** err) {
  auto g = static_cast<Group*>(gp);
  return guard(err, [&] { wait(g, g->pg->_reduce_scatter_base(*out, *in)); });
}

int ponder_dist_barrier(void* gp, char** err) {
  auto g = static_cast<Group*>(gp);
  return guard(err, [&] { wait(g, g->pg->barrier()); });
}

}  // extern "C"
