"""Planning and execution: shards, workers, local and Ray runners."""
