"""The Pi Platform benchmark: `python -m bench` (or `make bench`). See bench/README.md."""
