"""The proxy's reaches into libraries' private parts, one module per library.

Each module here is the only place the proxy relies on something a library does not promise
(an attribute, a private method, how a method is called), and each has a test file
(tests/test_hooks_*.py) that fails when an upgrade changes what the hook relies on.
"""
