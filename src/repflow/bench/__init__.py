"""Benchmarks: training and sampling throughput, memory and MFU."""
