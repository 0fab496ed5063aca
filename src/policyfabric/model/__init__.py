"""The policy model: objects (pydantic), their kinds, the one validator (``rules``) and scenario
files. Pure: no I/O beyond reading a scenario file; every other layer builds on it."""
