"""The trace file: DFTracer's pfw layout in whole gzip members (writer and reader)."""
