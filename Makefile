# The two commands of the README quick start, and what they are made of.
.PHONY: setup demo demo-video test test-slow lint zoo

setup:
	@bash scripts/setup.sh

# Pretrain RotNet on Fashion-MNIST for a few minutes, probe it against a random-init encoder,
# export it, and print the results table and the export path.
demo: setup
	.venv/bin/selfsup-demo

# The same for video: 3D RotNet on the offline sample clips, video probe, video export.
demo-video: setup
	.venv/bin/selfsup-demo --video

# Everything the tests need, then the suite (slow checks excluded: `make test-slow`).
test: setup
	.venv/bin/ruff check .
	.venv/bin/pytest -q -n 2

test-slow: setup
	.venv/bin/pytest -q -m slow

lint: setup
	.venv/bin/ruff check .

# The zoo results table (README "The zoo table"): every image task at one CPU budget, probed.
zoo: setup
	.venv/bin/selfsup-bench --out_dir=benchmarks/zoo
