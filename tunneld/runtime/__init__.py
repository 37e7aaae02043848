"""The daemon: event loop, lifecycle, control socket."""
