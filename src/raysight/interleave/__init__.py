"""The hook-based interleaver: resolve ops to hooks, apply them per row, stop early."""
