"""Adapters that run Archer's algorithm inside other RL frameworks (each imports its framework).

- :mod:`archer.integrations.verl`: Archer's and ASPO's losses in verl (docs/guides/migrating.md).
"""
