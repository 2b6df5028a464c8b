"""`python -m nemotron_train.launch`: see `nemotron_train.launch.cli`."""

from nemotron_train.launch.cli import main

main()
