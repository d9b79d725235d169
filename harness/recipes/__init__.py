"""What an experiment is: a recipe read from TOML and checked.

- spec.py: Experiment and its parts as typed dataclasses, and the configuration hash.
- catalogue.py: experiments/*.toml read into validated Experiment specs; select by id or glob.
"""
