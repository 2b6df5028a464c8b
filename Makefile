# The two commands of the README, and the slow tier.
.PHONY: train test test-slow

train:  ## install, then train the tiny recipe on this machine
	launch/setup_venv.sh
	.venv/bin/python train.py recipe=tiny

test:  ## install with the dev extra, then run the test suite
	launch/setup_venv.sh dev
	.venv/bin/python -m pytest -m "not slow"

test-slow:  ## the slow tier: 4-process layouts, long runs
	launch/setup_venv.sh dev
	.venv/bin/python -m pytest -m slow
