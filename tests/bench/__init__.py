"""Tests of the benchmark's own logic (bench/), and one smoke run of it."""
