"""What an experiment is: a recipe read from TOML and checked.

- spec.py: Experiment and its parts as typed dataclasses, and the configuration hash.
- catalogue.py: experiments/*.toml read into validated Experiment specs, a user's specs beside them; select by id or path.
- network.py: a recipe's network built, registered or the user's own, and checked by one forward pass.
- scaffold.py: `harness new`: a user's recipe and network copied from a documented one.
"""
