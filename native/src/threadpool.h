// A fixed pool of pinned worker threads that run one task at a time, all threads together,
// with a cheap spinning barrier between the operations of a task (one forward pass = one task).
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace sysinfer {

class ThreadPool {
 public:
  // n_threads workers; worker i is pinned to cpus[i % cpus.size()] (no pinning if cpus is empty).
  ThreadPool(int n_threads, const std::vector<int>& cpus);
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

  // Called by every worker inside a task: returns once all workers have reached it.
  void barrier();

 private:
  using TaskFn = void (*)(void*, int);
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

  alignas(64) std::atomic<int> barrier_count_{0};
  alignas(64) std::atomic<uint64_t> barrier_generation_{0};
};

// CPUs this process may run on (sched_getaffinity), in ascending order.
std::vector<int> allowed_cpus();

}  // namespace sysinfer
