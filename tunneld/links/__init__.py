"""One data plane per interface type: a proto core wired to its device and socket."""
