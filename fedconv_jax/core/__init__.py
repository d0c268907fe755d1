"""What every algorithm shares: data and spec types, the algorithm protocol and registry,
client training and mapping, server tuning, averaging, sampling, faults and sharding.

Nothing here imports an algorithm (algorithms import core, never the other way).
"""
