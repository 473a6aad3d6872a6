"""Controller tier: the real controller over the real `kubernetes` client against the fake API server."""
from tests.fakes.apiserver.fixtures import fake_apiserver  # noqa: F401
from tests.fakes.nvml_env import fake_nvml, fake_nvml_library  # noqa: F401
