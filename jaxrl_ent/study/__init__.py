"""The comparison study: entropy controls × seeds on one task and budget.

`plan` expands a study config into runs, `runner` executes them (resumable,
in parallel subprocesses sharing a compilation cache), `report` turns the
finished runs into the table, the claim checks and the plots.
"""
