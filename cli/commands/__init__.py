"""The CLI's commands, grouped by area: transfer (put, get), browse (ls, log, stat, rm, diff, watch,
info), admin (serve, certs, keys) and demo. Each module has a ``register(app)`` function."""
