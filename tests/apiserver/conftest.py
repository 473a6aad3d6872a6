from tests.fakes.apiserver.fixtures import (  # noqa: F401
    claim_controller,
    fake_apiserver,
    kube_client,
    kube_client_for,
    kubeconfig_path,
)
