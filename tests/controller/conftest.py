"""Controller tier: the real controller over the real `kubernetes` client against the fake API server."""
from tests.fakes.apiserver.fixtures import fake_apiserver  # noqa: F401
