#include "agent/channel.h"

namespace sluice {

Take& Take::operator=(Take&& other) noexcept {
  if (this != &other) {
    rollback();
    cursor_ = other.cursor_;
    id_ = other.id_;
    slices_ = std::move(other.slices_);
    events_ = other.events_;
    bytes_ = other.bytes_;
    other.cursor_ = nullptr;
  }
  return *this;
}

void Take::commit() {
  if (!cursor_) return;
  auto* c = cursor_;
  cursor_ = nullptr;
  c->commitTake(id_);
  slices_.clear();
}

void Take::rollback() {
  if (!cursor_) return;
  auto* c = cursor_;
  cursor_ = nullptr;
  c->rollbackTake(id_);
  slices_.clear();
}

}  // namespace sluice
