"""The ledger's domain: events, job state, commands, the transition table and the rules.

Pure: nothing here does I/O, runs SQL or reads a clock. The storage backends
(`ledger.backends`) and the projections' folds (`projections`) build on it; it builds on nothing
but msgspec and the standard library.
"""
