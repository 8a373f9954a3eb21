#include "threadpool.h"

#include <pthread.h>
#include <sched.h>

#include <chrono>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax() { asm volatile("yield" ::: "memory"); }
#else
static inline void cpu_relax() {}
#endif

namespace sysinfer {

namespace {
// Spins at a barrier this many times before it also yields the CPU on every further spin: with more
// threads than free cores (a shared machine, a forced NUMA split in tests) the thread being waited
// for may need this core.
constexpr int kSpinsBeforeYield = 4096;

inline void wait_while_equal(const std::atomic<uint64_t>& v, uint64_t old) {
  for (int spins = 0; v.load(std::memory_order_acquire) == old; ++spins) {
    cpu_relax();
    if (spins >= kSpinsBeforeYield) std::this_thread::yield();
  }
}

// How long an idle worker waits for the next task before it sleeps: steps come back to back while
// a request decodes, and a futex wake-up costs more than a short wait. It yields while it waits, so
// the Python threads that plan the next step (sampling, scheduling, streaming) get the CPU: on a
// machine with as many workers as cores a pure spin would starve them.
constexpr auto kWaitBeforeSleep = std::chrono::microseconds(300);

bool pin_current_thread(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}
}  // namespace

ThreadPool::ThreadPool(int n_threads, const std::vector<int>& cpus)
    : ThreadPool(std::vector<int>{n_threads < 1 ? 1 : n_threads}, cpus) {}

ThreadPool::ThreadPool(const std::vector<int>& group_sizes, const std::vector<int>& cpus) {
  group_first_.push_back(0);
  for (int n : group_sizes) {
    const int size = n < 1 ? 1 : n;
    for (int i = 0; i < size; ++i) group_of_.push_back(int(group_first_.size()) - 1);
    group_first_.push_back(group_first_.back() + size);
  }
  if (group_sizes.empty()) {
    group_of_.push_back(0);
    group_first_.push_back(1);
  }
  n_threads_ = group_first_.back();
  groups_.reset(new GroupBarrier[n_groups()]);
  start(cpus);
}

void ThreadPool::start(const std::vector<int>& cpus) {
  pinned_.assign(n_threads_, -1);
  for (int i = 0; i < n_threads_; ++i) {
    if (!cpus.empty()) pinned_[i] = cpus[i % cpus.size()];
    threads_.emplace_back([this, i] { worker_main(i); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::run_raw(TaskFn fn, void* ctx) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = fn;
    task_ctx_ = ctx;
    running_.store(n_threads_, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_cv_.notify_all();
  std::unique_lock<std::mutex> lock(mutex_);
  done_cv_.wait(lock, [this] { return running_.load(std::memory_order_acquire) == 0; });
}

void ThreadPool::worker_main(int tid) {
  if (pinned_[tid] >= 0 && !pin_current_thread(pinned_[tid])) pinned_[tid] = -1;
  uint64_t seen = 0;
  for (;;) {
    // Spin a little for the next task, then sleep until one comes.
    auto wait_until = std::chrono::steady_clock::now() + kWaitBeforeSleep;
    while (generation_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < wait_until) {
      for (int i = 0; i < 16; ++i) cpu_relax();
      std::this_thread::yield();
    }
    TaskFn fn;
    void* ctx;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      if (stop_) return;
      seen = generation_.load(std::memory_order_acquire);
      fn = task_;
      ctx = task_ctx_;
    }
    fn(ctx, tid);
    if (running_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);
      done_cv_.notify_one();
    }
  }
}

void ThreadPool::barrier(int tid) {
  if (n_threads_ == 1) return;
  const uint64_t gen = barrier_generation_.load(std::memory_order_acquire);
  const int g = group_of_[tid];
  GroupBarrier& gb = groups_[g];
  // The last thread of each group arrives for its group; the last group releases everyone.
  if (gb.count.fetch_add(1, std::memory_order_acq_rel) == group_size(g) - 1) {
    gb.count.store(0, std::memory_order_relaxed);
    if (barrier_count_.fetch_add(1, std::memory_order_acq_rel) == n_groups() - 1) {
      barrier_count_.store(0, std::memory_order_relaxed);
      barrier_generation_.fetch_add(1, std::memory_order_release);
      return;
    }
  }
  wait_while_equal(barrier_generation_, gen);
}

void ThreadPool::group_barrier(int tid) {
  const int g = group_of_[tid];
  if (group_size(g) == 1) return;
  GroupBarrier& gb = groups_[g];
  const uint64_t gen = gb.generation.load(std::memory_order_acquire);
  if (gb.count.fetch_add(1, std::memory_order_acq_rel) == group_size(g) - 1) {
    gb.count.store(0, std::memory_order_relaxed);
    gb.generation.fetch_add(1, std::memory_order_release);
  } else {
    wait_while_equal(gb.generation, gen);
  }
}

}  // namespace sysinfer
