"""The study: its file, its storage (and riding out an outage), locks, worker processes and threads, samplers, and
the runner that drives trials."""
