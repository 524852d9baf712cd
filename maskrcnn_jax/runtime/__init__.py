"""Where programs are compiled and run: device mesh, per-backend choices, XLA's view
of a compiled program."""
