"""`make demo` and `make up`: the whole platform as local processes on the tiny models."""
