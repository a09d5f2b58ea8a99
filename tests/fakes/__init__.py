"""Stand-ins for packages the tests cannot install (see each package's docstring)."""
