"""Tools for the project's tests, benchmarks and demo (not part of the installed library):
``tools.synth`` writes synthetic slides in each format's layout."""
