#pragma once
// `sluice channel inspect DIR`: what a file channel's directory holds, checked record by record,
// without starting the agent or taking its lock (read-only; safe while an agent runs, though a
// live tail may then show as torn).

#include <ostream>
#include <string>

namespace sluice {

// Prints segments (size, records, events, event range, invalid records with offsets), cursors,
// positions, and the events lost: every gap in event numbers (inside a segment, between two
// segments, or before the oldest segment where a cursor file still needs it) to `out`. Returns 0
// when every record verifies, 1 when damage was found, 2 when the directory cannot be read.
int inspectFileChannel(const std::string& dir, std::ostream& out);

}  // namespace sluice
