"""Runtimes compose the services into pipelines; the embedded runtime runs one in a single process."""
