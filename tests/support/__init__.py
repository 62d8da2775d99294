"""What tests, benchmarks and `make dev` share: real throwaway servers, and every helper
more than one test module needs (test modules never import one another or a conftest.py;
tests/test_layout.py checks it)."""
