"""The shared core every service builds on: configuration, names, interfaces and their embedded backends."""
