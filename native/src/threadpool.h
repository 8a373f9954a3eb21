// A fixed pool of pinned worker threads that run one task at a time, all threads together,
// with a cheap spinning barrier between the operations of a task (one forward pass = one task).
// Threads form groups (one per NUMA node, threads [first(g), first(g) + size(g))): a group barrier
// waits for one group only; the pool barrier for all (hierarchical: groups first, then the groups'
// last arrivals), so a node's threads mostly touch their own node's barrier line.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace sysinfer {

class ThreadPool {
 public:
  // n_threads workers; worker i is pinned to cpus[i % cpus.size()] (no pinning if cpus is empty).
  ThreadPool(int n_threads, const std::vector<int>& cpus);
  // Groups of group_sizes[g] threads; cpus: one per thread (or empty: no pinning).
  ThreadPool(const std::vector<int>& group_sizes, const std::vector<int>& cpus);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  const std::vector<int>& pinned_cpus() const { return pinned_; }

  // Runs f(thread_index) on every worker and returns when all have finished. The caller only
  // waits. f must not throw. Not reentrant: one run at a time.
  template <class F>
  void run(F& f) {
    run_raw([](void* ctx, int tid) { (*static_cast<F*>(ctx))(tid); }, &f);
  }

  int n_groups() const { return int(group_first_.size()) - 1; }
  int group_of(int tid) const { return group_of_[tid]; }
  int group_first(int g) const { return group_first_[g]; }
  int group_size(int g) const { return group_first_[g + 1] - group_first_[g]; }

  // Called by every worker inside a task: returns once all workers have reached it.
  void barrier(int tid);
  // Called by every worker of tid's group: returns once all of that group have reached it.
  void group_barrier(int tid);

 private:
  using TaskFn = void (*)(void*, int);
  void start(const std::vector<int>& cpus);
  void run_raw(TaskFn fn, void* ctx);
  void worker_main(int tid);

  int n_threads_;
  std::vector<int> pinned_;          // cpu of each worker, -1 if not pinned
  std::vector<std::thread> threads_;

  std::mutex mutex_;
  std::condition_variable wake_cv_;  // workers sleep here between tasks
  std::condition_variable done_cv_;  // the caller sleeps here during a task
  TaskFn task_ = nullptr;
  void* task_ctx_ = nullptr;
  std::atomic<uint64_t> generation_{0};  // bumped once per task
  std::atomic<int> running_{0};          // workers still inside the current task
  bool stop_ = false;

  std::vector<int> group_of_;     // [n_threads]
  std::vector<int> group_first_;  // [n_groups + 1]
  struct alignas(64) GroupBarrier {
    std::atomic<int> count{0};
    alignas(64) std::atomic<uint64_t> generation{0};  // bumped by each completed group barrier
  };
  std::unique_ptr<GroupBarrier[]> groups_;  // [n_groups]
  alignas(64) std::atomic<int> barrier_count_{0};   // groups arrived at the pool barrier
  alignas(64) std::atomic<uint64_t> barrier_generation_{0};
};

}  // namespace sysinfer
