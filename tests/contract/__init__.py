"""The contract suite: the laws and the public API's promises, run on every backend configuration.

A package (this file) so its modules do not clash by name with the backend-specific tests in
``tests/`` (``tests/test_laws.py`` and ``tests/contract/test_laws.py`` are different modules).
"""
