"""Hypothesis settings for the mutation run only (docs/testing.md), loaded as a pytest plugin
by the [tool.mutmut] section of pyproject.toml (`-p tests.mutation_settings`); the normal
test run never imports it.

A mutant that breaks a Hypothesis test makes it fail, and Hypothesis then spends tens of
seconds shrinking the failing example, which mutmut would count as a timeout. Mutation
testing needs only the verdict, so this profile skips the shrink phase, keeps no example
database between mutants, and draws a fixed sequence of examples.
"""
from hypothesis import Phase, settings

settings.register_profile("mutation", phases=[Phase.explicit, Phase.generate], database=None, derandomize=True,
                          print_blob=False)
settings.load_profile("mutation")
