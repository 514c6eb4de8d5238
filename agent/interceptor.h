#pragma once
// The interceptor contract: a step that runs on a source's batch, in configured order, before
// the batch is put into channels. It may add, change or remove headers and drop events
// (Batch::retainIf). It runs on the loop thread and must be fast: no I/O, no blocking.
//
// Interceptors may run twice on the same batch only if it was never accepted; they are written
// to be idempotent (a header set twice has the same value; a filter drops nothing the second
// time).

#include <memory>

#include "agent/event.h"
#include "agent/metrics.h"

namespace sluice {

class Interceptor {
 public:
  virtual ~Interceptor() = default;
  // Returns how many events it dropped on purpose (filters); 0 for the others.
  virtual size_t apply(Batch& batch) = 0;
};

using InterceptorPtr = std::unique_ptr<Interceptor>;

}  // namespace sluice
