"""A plug-in package as a user would write it: one policy, network, method and source, used by
tests/test_plugins.py through ``module:attr`` references and through entry points."""
