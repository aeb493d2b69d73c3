import pytest

# Shared helpers assert too: give them pytest's detailed assertion messages.
pytest.register_assert_rewrite("tests.failures.helpers")
