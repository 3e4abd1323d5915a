"""A dataset as it lies in storage: where it is (store), what it claims (manifest), reading it
back (reader, decode) and proving it whole (verify)."""
