"""The benchmark suite (issue 15): every script runs as a file and prints its figure beside its baseline from the same
run; ``python -m benchmarks`` runs them all in bounded time and keeps their JSON; ``benchmarks/plot.py`` draws the
README's chart from it."""
