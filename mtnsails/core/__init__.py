"""Foundations every stage uses: the error type, settings dataclasses, crash-safe files, the CPU,
sentence rules, and the ranks of a distributed run. Imports nothing from the other stages."""
