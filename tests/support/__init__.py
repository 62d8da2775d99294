"""Real throwaway servers for tests, benchmarks and `make dev`."""
