"""Hostile-input checks: seed files, the invariant every input must keep, named mutations (the
corruption corpus), coverage-guided harnesses (atheris) and the long campaign. Not installed."""
